"""Kaggle credentials: find them in the official order, validate them, install them safely.

Order (the one Kaggle's own clients use; the first hit wins):

1. ``KAGGLE_API_TOKEN``: an access token, or the path of a file that holds one.
2. ``~/.kaggle/access_token`` (also ``access_token.txt``), then ``$KAGGLE_CONFIG_DIR/access_token``
   (so a token installed with ``KAGGLE_CONFIG_DIR`` set is found again).
3. ``KAGGLE_USERNAME`` + ``KAGGLE_KEY`` (both; one alone is ignored with a warning).
4. ``kaggle.json`` (``{"username": …, "key": …}``) in ``$KAGGLE_CONFIG_DIR``, ``~/.kaggle/``, then
   ``$XDG_CONFIG_HOME/kaggle/`` (``~/.config/kaggle/``).

The secret (key or token) lives in a :class:`Secret` whose ``repr``/``str`` are ``***``: it never
reaches logs, errors or files other than the credential file itself. A credential file readable by
other users is accepted with a warning (like the official client), kept in
``KaggleCredentials.warnings`` and logged; ``install_credentials`` always writes mode 0600 in a 0700
folder.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from imgae_dx.errors import CredentialsError
from imgae_dx.utils.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

TOKEN_ENV = "KAGGLE_API_TOKEN"
USERNAME_ENV = "KAGGLE_USERNAME"
KEY_ENV = "KAGGLE_KEY"
CONFIG_DIR_ENV = "KAGGLE_CONFIG_DIR"
KAGGLE_JSON = "kaggle.json"
ACCESS_TOKEN = "access_token"
INSTALL_HINT = (
    "run `imgae-dx setup-kaggle --api-key-path kaggle.json` (kaggle.json comes from "
    "https://www.kaggle.com/settings → API → Create New Token), or set KAGGLE_API_TOKEN, "
    "or KAGGLE_USERNAME and KAGGLE_KEY"
)

CredentialKind = Literal["token", "key"]


class Secret:
    """A string that does not print itself. ``reveal()`` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict) -> Secret:
        return self

    def __reduce__(self):  # never pickled into checkpoints or worker processes by accident
        raise TypeError("a Secret (Kaggle key or token) cannot be pickled")


@dataclass(frozen=True)
class KaggleCredentials:
    """Credentials for Kaggle's API, safe to print.

    Attributes:
        kind: ``"token"`` (access token, bearer auth) or ``"key"`` (username + API key, basic auth).
        username: the Kaggle user name (``None`` for a token).
        source: where they came from, e.g. ``"file /home/u/.kaggle/kaggle.json"``.
        secret: the key or token, hidden in ``repr``/``str``.
        path: the file they were read from, if any.
        warnings: problems that did not stop their use (e.g. a world-readable file).
    """

    kind: CredentialKind
    username: str | None
    source: str
    secret: Secret = field(repr=False, compare=False)
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``kagglesdk.KaggleClient`` (contain the secret: do not log)."""
        if self.kind == "token":
            return {"api_token": self.secret.reveal()}
        assert self.username is not None
        return {"username": self.username, "password": self.secret.reveal()}

    def describe(self) -> str:
        """One secret-free line: what and where."""
        who = f"user {self.username!r}" if self.username else "access token"
        return f"{who} from {self.source}"

    @classmethod
    def from_key(cls, username: str, key: str, source: str = "arguments") -> KaggleCredentials:
        """Credentials given directly (e.g. by a Colab secret); validated like a file."""
        _check_key_fields({"username": username, "key": key}, where=source)
        return cls("key", username.strip(), source, Secret(key.strip()))

    @classmethod
    def from_token(cls, token: str, source: str = "arguments") -> KaggleCredentials:
        _check_token(token, where=source)
        return cls("token", None, source, Secret(token.strip()))


# ---------------------------------------------------------------------------------- helpers
def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _config_dirs(env: Mapping[str, str]) -> list[Path]:
    """Folders searched for kaggle.json, in order."""
    dirs: list[Path] = []
    if env.get(CONFIG_DIR_ENV):
        dirs.append(Path(os.path.expanduser(env[CONFIG_DIR_ENV])))
    dirs.append(_home() / ".kaggle")
    xdg = env.get("XDG_CONFIG_HOME") or str(_home() / ".config")
    dirs.append(Path(os.path.expanduser(xdg)) / "kaggle")
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _token_files(env: Mapping[str, str]) -> list[Path]:
    files = [_home() / ".kaggle" / ACCESS_TOKEN, _home() / ".kaggle" / f"{ACCESS_TOKEN}.txt"]
    if env.get(CONFIG_DIR_ENV):
        files.append(Path(os.path.expanduser(env[CONFIG_DIR_ENV])) / ACCESS_TOKEN)
    out: list[Path] = []
    for f in files:
        if f not in out:
            out.append(f)
    return out


def _permission_warning(path: Path) -> str | None:
    """A warning if group or others may read the file (POSIX only)."""
    if os.name != "posix":
        return None
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{path} is readable by other users of this machine (mode {stat.S_IMODE(mode):o}); "
            f"fix: chmod 600 {path}"
        )
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CredentialsError(
            f"{path} is not a text file; expected kaggle.json or an access-token file. {INSTALL_HINT}"
        ) from None
    except OSError as e:
        raise CredentialsError(f"cannot read Kaggle credentials file {path}: {e.strerror or e}") from None


def _check_token(token: str, where: str) -> None:
    t = token.strip()
    if not t:
        raise CredentialsError(f"the Kaggle access token in {where} is empty. {INSTALL_HINT}")
    if any(c.isspace() for c in t) or not t.isprintable():
        raise CredentialsError(
            f"the Kaggle access token in {where} contains spaces or control characters; "
            "expected the single token string from https://www.kaggle.com/settings"
        )


def _check_key_fields(data: object, where: str) -> tuple[str, str]:
    if not isinstance(data, dict):
        raise CredentialsError(
            f"{where} must hold a JSON object like {{\"username\": \"you\", \"key\": \"…\"}}, "
            f"got a JSON {type(data).__name__}"
        )
    missing = [k for k in ("username", "key") if k not in data]
    if missing:
        raise CredentialsError(
            f"{where} lacks the field(s) {', '.join(missing)}; it must hold "
            "{\"username\": \"you\", \"key\": \"…\"} — download a fresh kaggle.json from "
            "https://www.kaggle.com/settings → API → Create New Token"
        )
    user, key = data["username"], data["key"]
    if not isinstance(user, str) or not user.strip():
        raise CredentialsError(f"{where}: field 'username' is empty or not a string")
    if not isinstance(key, str) or not key.strip():
        raise CredentialsError(
            f"{where}: field 'key' is empty or not a string — download a fresh kaggle.json from "
            "https://www.kaggle.com/settings → API → Create New Token"
        )
    if any(c.isspace() for c in key.strip()):
        raise CredentialsError(f"{where}: field 'key' contains spaces; copy the key exactly")
    return user.strip(), key.strip()


def parse_credentials_file(path: str | os.PathLike[str]) -> KaggleCredentials:
    """Read and validate ``kaggle.json`` or an access-token file.

    A file whose content starts with ``{`` is read as kaggle.json; anything else as a token.

    Raises:
        CredentialsError: unreadable, bad JSON, missing fields, empty key/token (names the file,
            never the secret).
    """
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.exists():
        raise CredentialsError(f"Kaggle credentials file {p} does not exist. {INSTALL_HINT}")
    if p.is_dir():
        raise CredentialsError(f"{p} is a folder; give the path of kaggle.json or an access-token file")
    text = _read_text(p)
    warn = _permission_warning(p)
    warnings = (warn,) if warn else ()
    stripped = text.strip()
    if stripped.startswith("{") or p.suffix.lower() == ".json":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            # e.msg and the position only: the document itself may hold the key.
            raise CredentialsError(
                f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); it must hold "
                "{\"username\": \"you\", \"key\": \"…\"} — download a fresh kaggle.json from "
                "https://www.kaggle.com/settings → API → Create New Token"
            ) from None
        user, key = _check_key_fields(data, where=str(p))
        return KaggleCredentials("key", user, f"file {p}", Secret(key), p, warnings)
    _check_token(stripped, where=str(p))
    return KaggleCredentials("token", None, f"file {p}", Secret(stripped), p, warnings)


def _emit(creds: KaggleCredentials) -> KaggleCredentials:
    for w in creds.warnings:
        log.warning("%s", w)
    return creds


def find_credentials(env: Mapping[str, str] | None = None) -> KaggleCredentials | None:
    """The credentials Kaggle's clients would use, or ``None`` if there are none.

    Raises:
        CredentialsError: the first source found is present but invalid (a broken file is not
            silently skipped in favour of a later one).
    """
    env = os.environ if env is None else env

    raw = env.get(TOKEN_ENV, "")
    if raw.strip():
        candidate = Path(os.path.expanduser(raw.strip()))
        looks_like_path = os.sep in raw or raw.strip().startswith("~")
        if candidate.is_file():
            text = _read_text(candidate).strip()
            _check_token(text, where=f"{candidate} (named by {TOKEN_ENV})")
            warn = _permission_warning(candidate)
            return _emit(KaggleCredentials(
                "token", None, f"file {candidate} (named by {TOKEN_ENV})", Secret(text), candidate,
                (warn,) if warn else (),
            ))
        if looks_like_path:
            raise CredentialsError(
                f"{TOKEN_ENV} names the file {candidate}, which does not exist; point it at a file "
                "holding your access token, or set it to the token itself"
            )
        _check_token(raw, where=f"environment variable {TOKEN_ENV}")
        return KaggleCredentials("token", None, f"environment variable {TOKEN_ENV}", Secret(raw.strip()))

    for f in _token_files(env):
        if f.is_file():
            creds = parse_credentials_file(f)
            if creds.kind != "token":
                raise CredentialsError(
                    f"{f} should hold an access token but holds kaggle.json content; "
                    f"rename it to {f.parent / KAGGLE_JSON}"
                )
            return _emit(creds)

    user, key = env.get(USERNAME_ENV, "").strip(), env.get(KEY_ENV, "").strip()
    if user and key:
        return KaggleCredentials.from_key(
            user, key, source=f"environment variables {USERNAME_ENV} and {KEY_ENV}"
        )
    if user or key:
        have, lack = (USERNAME_ENV, KEY_ENV) if user else (KEY_ENV, USERNAME_ENV)
        log.warning("%s is set but %s is not; ignoring it and looking for kaggle.json", have, lack)

    for d in _config_dirs(env):
        f = d / KAGGLE_JSON
        if f.is_file():
            creds = parse_credentials_file(f)
            if creds.kind != "key":
                raise CredentialsError(
                    f"{f} must hold {{\"username\": …, \"key\": …}} JSON, not a bare token; "
                    f"an access token belongs in {d / ACCESS_TOKEN}"
                )
            return _emit(creds)
    return None


def searched_locations(env: Mapping[str, str] | None = None) -> list[str]:
    """Every place :func:`find_credentials` looks, in order (for messages)."""
    env = os.environ if env is None else env
    return (
        [f"${TOKEN_ENV}"]
        + [str(f) for f in _token_files(env)]
        + [f"${USERNAME_ENV} + ${KEY_ENV}"]
        + [str(d / KAGGLE_JSON) for d in _config_dirs(env)]
    )


def resolve_credentials(env: Mapping[str, str] | None = None) -> KaggleCredentials:
    """Like :func:`find_credentials` but raises a :class:`CredentialsError` when none exist."""
    creds = find_credentials(env)
    if creds is None:
        half = ""
        env_ = os.environ if env is None else env
        if bool(env_.get(USERNAME_ENV, "").strip()) != bool(env_.get(KEY_ENV, "").strip()):
            half = f" ({USERNAME_ENV} and {KEY_ENV} must both be set)"
        raise CredentialsError(
            "no Kaggle credentials found" + half + "; looked at: "
            + ", ".join(searched_locations(env)) + f". Fix: {INSTALL_HINT}"
        )
    return creds


# ------------------------------------------------------------------------------------ install
@dataclass(frozen=True)
class InstallResult:
    """What :func:`install_credentials` did.

    Attributes:
        path: the installed file (mode 0600).
        kind: ``"key"`` (kaggle.json) or ``"token"`` (access_token).
        username: user of a kaggle.json (``None`` for a token).
        active: the credentials that will actually be used now (env variables win).
        shadowed: ``True`` when ``active`` is not the installed file; ``note`` says why.
        note: one secret-free line for the user.
        warnings: e.g. the source file was world-readable, the folder mode was tightened.
    """

    path: Path
    kind: CredentialKind
    username: str | None
    active: KaggleCredentials | None
    shadowed: bool
    note: str
    warnings: tuple[str, ...] = ()


def default_install_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$KAGGLE_CONFIG_DIR`` if set, else ``~/.kaggle``."""
    env = os.environ if env is None else env
    if env.get(CONFIG_DIR_ENV):
        return Path(os.path.expanduser(env[CONFIG_DIR_ENV]))
    return _home() / ".kaggle"


def install_credentials(
    path: str | os.PathLike[str], dest_dir: str | os.PathLike[str] | None = None
) -> InstallResult:
    """Validate ``kaggle.json`` or an access-token file and install it privately.

    kaggle.json goes to ``DEST/kaggle.json``, a token to ``DEST/access_token``, where DEST is
    ``dest_dir`` or ``$KAGGLE_CONFIG_DIR`` or ``~/.kaggle`` (created 0700; a looser existing folder
    is tightened to 0700). The file is written atomically with mode 0600.

    Raises:
        CredentialsError: invalid content, or the folder cannot be written (names paths, not secrets).
    """
    src = parse_credentials_file(path)
    warnings = list(src.warnings)
    dest = Path(os.path.expanduser(os.fspath(dest_dir))) if dest_dir is not None else default_install_dir()
    try:
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "posix":
            mode = stat.S_IMODE(dest.stat().st_mode)
            if mode & 0o077:
                os.chmod(dest, 0o700)
                warnings.append(f"tightened {dest} from mode {mode:o} to 700")
    except OSError as e:
        raise CredentialsError(
            f"cannot create the Kaggle credentials folder {dest}: {e.strerror or e}; "
            f"choose another with --dest or KAGGLE_CONFIG_DIR"
        ) from None

    if src.kind == "key":
        target = dest / KAGGLE_JSON
        payload = (json.dumps({"username": src.username, "key": src.secret.reveal()}) + "\n").encode()
    else:
        target = dest / ACCESS_TOKEN
        payload = (src.secret.reveal() + "\n").encode()
    same_file = target.exists() and src.path is not None and target.resolve() == src.path.resolve()
    try:
        atomic_write_bytes(target, payload, file_mode=0o600)
    except OSError as e:
        raise CredentialsError(f"cannot write {target}: {e.strerror or e}") from None
    if same_file:
        warnings.append(f"{target} was already in place; its mode is now 600")

    active = find_credentials()
    shadowed = active is None or active.path is None or active.path.resolve() != target.resolve()
    if active is None:
        note = (
            f"installed {target}, but Kaggle's clients will not find it there: set "
            f"{CONFIG_DIR_ENV}={dest} (or install into ~/.kaggle)"
        )
    elif shadowed:
        note = (
            f"installed {target}, but {active.source} takes precedence and will be used "
            f"({active.describe()}); unset it to use the installed file"
        )
    else:
        note = f"installed {target} (mode 600); it will be used: {active.describe()}"
    return InstallResult(target, src.kind, src.username, active, shadowed, note, tuple(warnings))
