"""The real kagglesdk against the loopback Kaggle emulator (KAGGLE_API_ENVIRONMENT=TEST).

Covers resolving the signed archive URL from the download redirect, listing files, reading members
of a real zip by Range through the signed URL, re-resolving an expired signature, refusing a
changed ETag, honouring Retry-After on 429 and clear errors for bad credentials, a missing dataset
and no network — never with the key in a message. Competitions (``kaggle-competition:SLUG``, the
SDK's ``DownloadDataFiles``) stream the same way; unaccepted rules and unknown competitions get
their own messages.
"""

from __future__ import annotations

import io
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.errors import CredentialsError, DatasetChangedError, SourceError, UserError
from imgae_dx.streaming.archive_index import ArchiveIndex
from imgae_dx.streaming.credentials import KaggleCredentials
from imgae_dx.streaming.kaggle_client import (
    KaggleCompetitionNotFoundError,
    KaggleDatasetNotFoundError,
    KaggleNetworkError,
    KaggleNotFoundError,
    KaggleRulesNotAcceptedError,
    KaggleStreamClient,
    KaggleTarget,
    parse_competition,
    parse_dataset,
    parse_target,
)
from imgae_dx.streaming.retry import RetryPolicy
from imgae_dx.testing.kaggle_emulator import KaggleEmulator
from imgae_dx.testing.range_server import Faults

pytestmark = pytest.mark.network

USER, KEY = "alice", "c0ffee0123456789abcdef0123456789"
TOKEN = "KGAT_0123456789abcdef0123456789"
REF = "nih-chest-xrays/data"
COMP = "rsna-pneumonia-detection-challenge"


def make_zip(path: Path, seed: int = 0, n: int = 12) -> dict[str, bytes]:
    """A small NIH-layout zip: deflated 'images' (compressible noise) and stored metadata."""
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    for i in range(n):
        stage = f"images_{1 + i // 6:03d}"
        data = (rng.integers(0, 16, size=40_000, dtype=np.uint8) * 16).tobytes()
        members[f"{stage}/images/{i:08d}_000.png"] = data
    members["Data_Entry_2017.csv"] = b"Image Index,Finding Labels\n" + b"".join(
        f"{i:08d}_000.png,No Finding\n".encode() for i in range(n)
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            method = zipfile.ZIP_STORED if name.endswith(".csv") else zipfile.ZIP_DEFLATED
            zf.writestr(name, data, compress_type=method)
    return members


class ReaderFile(io.RawIOBase):
    """A seekable file over a RangeReader, so the stdlib zipfile reads members by Range."""

    def __init__(self, reader) -> None:
        self.r, self.pos = reader, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = {0: off, 1: self.pos + off, 2: self.r.size + off}[whence]
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.r.size - self.pos))
        data = self.r.read(self.pos, n)
        b[: len(data)] = data
        self.pos += len(data)
        return len(data)


@pytest.fixture(scope="module")
def emulator():
    with KaggleEmulator() as emu:
        emu.add_user(USER, KEY)
        emu.add_token(TOKEN, "tokenuser")
        emu.add_user("bob", "b0b0b0b0b0b0b0b0")
        yield emu


@pytest.fixture
def kaggle(emulator, tmp_path, monkeypatch):
    """The emulator with a fresh NIH-like dataset; kagglesdk pointed at it."""
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    members = make_zip(tmp_path / "data.zip")
    ds = emulator.add_dataset(REF, tmp_path / "data.zip")
    emulator.add_dataset("private/only-alice", tmp_path / "data.zip", allowed_users={USER})
    emulator.reset_counters()
    emulator.clear_faults()
    emulator.members = members
    yield emulator
    assert ds.storage.counts()["methods"].get("HEAD", 0) == 0  # storage is never probed with HEAD


def client(dataset: str = REF, creds: KaggleCredentials | None = None, **kw) -> KaggleStreamClient:
    kw.setdefault("retry", RetryPolicy(retries=3, backoff_s=0.01, backoff_max_s=0.05, seed=0))
    return KaggleStreamClient(dataset, creds or KaggleCredentials.from_key(USER, KEY), **kw)


def test_resolve_returns_the_signed_storage_url_unread(kaggle, tmp_path):
    c = client()
    r = c.resolve_archive()
    ds = kaggle.dataset(REF)
    assert r.url.startswith(ds.storage.base_url + "/storage/") and "sig=" in r.url
    assert r.size == (tmp_path / "data.zip").stat().st_size
    assert r.etag == ds.storage.etag
    assert "sig=" not in repr(r)  # the signature is a secret
    assert kaggle.calls["DownloadDataset"] == 1 and kaggle.redirects == 1
    counts = ds.storage.counts()  # the redirected GET is a 1-byte probe: no archive bytes
    assert counts["bytes_sent"] == 1 and counts["status"] == {206: 1}
    assert kaggle.last_auth == f"basic:{USER}"
    assert c.identity == "kaggle:nih-chest-xrays/data"


def test_list_files_follows_pages(kaggle):
    files = client().list_files(page_size=5)
    assert [(f.name, f.size) for f in files] == [(n, len(d)) for n, d in kaggle.members.items()]
    assert kaggle.calls["ListDatasetFiles"] == 3  # 13 files / 5 per page
    assert len(client().list_files(limit=4, page_size=3)) == 4


def test_read_zip_members_by_range_through_the_signed_url(kaggle):
    with client().open_reader() as reader:
        assert reader.identity == "kaggle:nih-chest-xrays/data"
        with zipfile.ZipFile(ReaderFile(reader)) as zf:
            got = {i.filename: zf.read(i) for i in zf.infolist()}  # zipfile checks each CRC
        assert got == kaggle.members
        stats = reader.stats.snapshot()
    counts = kaggle.dataset(REF).storage.counts()
    assert counts["status"].get(206, 0) >= len(got)  # member reads are Range requests
    assert counts["status"].get(200, 0) == 0  # never a whole-archive GET
    assert stats["bytes_fetched"] < 3 * sum(len(d) for d in kaggle.members.values())


def test_expired_signature_is_re_resolved(kaggle):
    c = client()
    with c.open_reader() as reader:
        first = reader.read(0, 4)
        assert first == b"PK\x03\x04"
        kaggle.dataset(REF).storage.rotate_key()  # every issued URL now answers 403
        assert reader.read(30, 100) == (kaggle.dataset(REF).archive.read_bytes())[30:130]
        assert reader.stats.snapshot()["retries"] >= 1
    assert c.resolves == 2 and kaggle.calls["DownloadDataset"] == 2
    assert kaggle.dataset(REF).storage.counts()["status"].get(403, 0) == 1


@pytest.mark.parametrize("kind", ["dataset", "competition"])
def test_changed_etag_mid_run_is_refused(comp, tmp_path, kind):
    c, ref, entry = (client(), REF, comp.dataset) if kind == "dataset" else (comp_client(), COMP, comp.competition)
    with c.open_reader() as reader:
        reader.read(0, 10)
        make_zip(tmp_path / "v2.zip", seed=1)
        comp.replace_archive(ref, tmp_path / "v2.zip")
        entry(ref).storage.rotate_key()
        with pytest.raises(DatasetChangedError, match=f"{c.identity} changed version") as e:
            reader.read(0, 10)
        assert "sig=" not in str(e.value) and KEY not in str(e.value)


def test_429_retry_after_is_honoured(kaggle):
    kaggle.inject(429, count=1, retry_after=1)
    t0 = time.monotonic()
    r = client().resolve_archive()  # backoff alone would wait ≤ 0.01 s
    assert time.monotonic() - t0 >= 0.95
    assert r.size is not None and kaggle.calls["DownloadDataset"] == 2


def test_429_past_the_retry_budget_is_a_clear_error(kaggle):
    kaggle.inject(429, count=3, retry_after=0)
    with pytest.raises(SourceError, match="429"):
        client(retry=RetryPolicy(retries=2, backoff_s=0.0)).verify()
    assert kaggle.calls["DownloadDataset"] == 3


def test_5xx_burst_on_api_and_storage_is_retried(kaggle):
    kaggle.inject(503, count=2)
    kaggle.dataset(REF).storage.set_faults(Faults(error_5xx=1.0, max_faults=1))  # the redirect GET
    assert client().verify().size is not None
    assert kaggle.calls["DownloadDataset"] == 4


@pytest.mark.parametrize("kind", ["key", "token"])
def test_bad_credentials_clear_error_without_the_secret(kaggle, kind):
    wrong = "wrong-secret-0123456789abcdef"
    creds = KaggleCredentials.from_key(USER, wrong) if kind == "key" else KaggleCredentials.from_token(wrong)
    with pytest.raises(CredentialsError) as e:
        client(creds=creds).verify()
    msg = str(e.value)
    assert "HTTP 401" in msg and "setup-kaggle" in msg
    assert wrong not in msg and wrong not in repr(e.value)
    assert kaggle.auth_failures == 1  # not retried


def test_token_auth(kaggle):
    assert client(creds=KaggleCredentials.from_token(TOKEN)).verify().size is not None
    assert kaggle.last_auth == "bearer"


def test_explicit_key_wins_over_a_token_in_the_environment(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_some_other_token")
    client().verify()
    assert kaggle.last_auth == f"basic:{USER}"


def test_credentials_resolved_from_the_environment(kaggle, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    c = KaggleStreamClient(REF)
    c.verify()
    assert "KAGGLE_USERNAME" in repr(c) and KEY not in repr(c)


def test_dataset_not_shared_is_403_credentials_error(kaggle):
    with pytest.raises(CredentialsError, match="HTTP 403"):
        client("private/only-alice", KaggleCredentials.from_key("bob", "b0b0b0b0b0b0b0b0")).verify()
    assert client("private/only-alice").verify().size is not None


def test_missing_dataset_is_404(kaggle):
    with pytest.raises(KaggleDatasetNotFoundError, match="no-such/dataset.*HTTP 404"):
        client("no-such/dataset").verify()
    assert kaggle.calls["DownloadDataset"] == 1


def test_no_network_is_named(kaggle):
    with kaggle.offline():  # nobody listens on 7777 in this block
        t0 = time.monotonic()
        with pytest.raises(KaggleNetworkError, match="no network.*localhost:7777") as e:
            client(retry=RetryPolicy(retries=1, backoff_s=0.01)).verify()
        assert time.monotonic() - t0 < 10
    assert KEY not in str(e.value)


def test_bad_dataset_names_and_environment(monkeypatch):
    assert parse_dataset("kaggle:a/b") == ("a", "b")
    for bad in ("nih", "a/b/c", "/b", "a b/c"):
        with pytest.raises(UserError, match="OWNER/SLUG"):
            parse_dataset(bad)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "MARS")
    with pytest.raises(UserError, match="KAGGLE_API_ENVIRONMENT"):
        client().verify()


def test_missing_sdk_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglesdk", None)
    monkeypatch.setitem(sys.modules, "kagglesdk.kaggle_client", None)
    with pytest.raises(UserError, match="pip install kagglesdk"):
        client().verify()


def test_no_credentials_at_all(monkeypatch):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    assert not any(k.startswith("KAGGLE_") and k != "KAGGLE_API_ENVIRONMENT" for k in os.environ)
    with pytest.raises(CredentialsError, match="no Kaggle credentials found"):
        KaggleStreamClient(REF).verify()


def test_open_archive_kaggle_source_end_to_end_with_storage_faults(kaggle, tmp_path, monkeypatch):
    """``kaggle:OWNER/SLUG`` through open_archive: index + every member intact despite faults."""
    from imgae_dx.config import DataConfig, HttpConfig
    from imgae_dx.streaming.sources import open_archive

    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    storage = kaggle.dataset(REF).storage
    storage.set_faults(Faults(reset=0.1, short=0.1, error_5xx=0.1, corrupt=0.05, seed=3, apply_to_tail=False))
    cfg = DataConfig(index_cache_dir=str(tmp_path / "idx"),
                     http=HttpConfig(retries=8, backoff_s=0.001, backoff_max_s=0.01, timeout_s=10))
    with open_archive(f"kaggle:{REF}", cfg) as archive:
        assert archive.identity == f"kaggle:{REF}"
        got = {name: archive.read_member(name) for name in kaggle.members}
    assert got == kaggle.members
    assert sum(storage.counts()["faults"].values()) > 0


# ------------------------------------------------------------------------------ competitions
@pytest.fixture
def comp(kaggle, tmp_path):
    """Competition COMP serving the fixture's archive; alice has accepted its rules, bob has not."""
    kaggle.add_competition(COMP, tmp_path / "data.zip", accepted_users={USER})
    kaggle.reset_counters()
    yield kaggle
    assert kaggle.competition(COMP).storage.counts()["methods"].get("HEAD", 0) == 0


def comp_client(slug: str = COMP, creds: KaggleCredentials | None = None, **kw) -> KaggleStreamClient:
    kw.setdefault("retry", RetryPolicy(retries=3, backoff_s=0.01, backoff_max_s=0.05, seed=0))
    return KaggleStreamClient(credentials=creds or KaggleCredentials.from_key(USER, KEY), competition=slug, **kw)


def test_competition_resolves_through_download_data_files_unread(comp, tmp_path):
    c = comp_client()
    assert (c.identity, c.competition, c.dataset, c.owner) == (f"kaggle-competition:{COMP}", COMP, None, None)
    r = c.resolve_archive()
    storage = comp.competition(COMP).storage
    assert r.url.startswith(storage.base_url + "/storage/competitions/") and "sig=" in r.url
    assert r.size == (tmp_path / "data.zip").stat().st_size and r.etag == storage.etag
    assert comp.calls["DownloadDataFiles"] == 1 and comp.calls["DownloadDataset"] == 0 and comp.redirects == 1
    counts = storage.counts()  # the redirected GET is a 1-byte probe: no archive bytes
    assert counts["bytes_sent"] == 1 and counts["status"] == {206: 1}
    assert comp.dataset(REF).storage.counts()["requests"] == 0  # the dataset's storage is untouched


def test_competition_members_by_range_and_expired_signature_re_resolved(comp):
    c = comp_client()
    storage = comp.competition(COMP).storage
    with c.open_reader() as reader:
        assert reader.identity == f"kaggle-competition:{COMP}" and reader.version == storage.etag.strip('"')
        with zipfile.ZipFile(ReaderFile(reader)) as zf:
            assert {i.filename: zf.read(i) for i in zf.infolist()} == comp.members
        storage.rotate_key()  # every issued URL now answers 403
        assert reader.read(30, 100) == comp.competition(COMP).archive.read_bytes()[30:130]
        assert reader.stats.snapshot()["retries"] >= 1
    assert c.resolves == 2 and comp.calls["DownloadDataFiles"] == 2
    assert storage.counts()["status"].get(403, 0) == 1 and storage.counts()["status"].get(200, 0) == 0


def test_competition_rules_not_accepted_names_the_rules_page(comp):
    bob = KaggleCredentials.from_key("bob", "b0b0b0b0b0b0b0b0")
    with pytest.raises(KaggleRulesNotAcceptedError) as e:
        comp_client(creds=bob).verify()
    msg = str(e.value)
    assert isinstance(e.value, UserError) and not isinstance(e.value, CredentialsError)
    assert "\n" not in msg and "b0b0b0b0b0b0b0b0" not in msg
    assert f"rules of Kaggle competition {COMP} are not accepted" in msg and "HTTP 403" in msg
    assert f"https://www.kaggle.com/competitions/{COMP}/rules" in msg and '"I Understand and Accept"' in msg
    assert "Kaggle says" not in msg  # its "You must accept this competition's rules" adds nothing
    assert comp.calls["DownloadDataFiles"] == 1  # a refusal is final: not retried
    comp.inject(403)  # a 403 for another reason: Kaggle's own words are kept
    with pytest.raises(KaggleRulesNotAcceptedError, match='Kaggle says: "Injected failure".*/rules'):
        comp_client(creds=bob).verify()
    assert [f.name for f in comp_client(creds=bob).list_files()] == list(comp.members)  # listing needs no rules
    comp.accept_rules(COMP, "bob")  # the user clicks "I Understand and Accept"
    assert comp_client(creds=bob).verify().size == comp.competition(COMP).archive.stat().st_size


def test_unknown_competition_is_404(comp):
    with pytest.raises(KaggleCompetitionNotFoundError, match="competition no-such-competition not found.*HTTP 404") as e:
        comp_client("no-such-competition").verify()
    assert isinstance(e.value, KaggleNotFoundError) and "kaggle.com/competitions/SLUG" in str(e.value)
    assert comp.calls["DownloadDataFiles"] == 1


def test_competition_list_files_follows_pages(comp):
    files = comp_client().list_files(page_size=5)
    assert [(f.name, f.size) for f in files] == [(n, len(d)) for n, d in comp.members.items()]
    assert comp.calls["ListDataFiles"] == 3 and comp.calls["ListDatasetFiles"] == 0


def test_competition_429_and_bad_credentials_share_the_dataset_handling(comp):
    comp.inject(429, count=1, retry_after=0)
    assert comp_client().verify().size is not None and comp.calls["DownloadDataFiles"] == 2
    with pytest.raises(CredentialsError, match="HTTP 401"):
        comp_client(creds=KaggleCredentials.from_key(USER, "wrong-key-0123456789")).verify()


def test_competition_names_and_targets():
    assert parse_competition(f"kaggle-competition:{COMP}") == parse_competition(COMP) == COMP
    for bad in ("kaggle-competition:", "kaggle-competition:a/b", "a b", "", "-x"):
        with pytest.raises(UserError, match="kaggle-competition:SLUG"):
            parse_competition(bad)
    assert parse_target(f"kaggle-competition:{COMP}") == KaggleTarget("competition", COMP)
    assert parse_target("kaggle:a/b") == parse_target("a/b") == KaggleTarget("dataset", "b", "a")
    with pytest.raises(UserError, match="OWNER/SLUG.*kaggle-competition:SLUG"):
        parse_target("nih")
    assert KaggleTarget("competition", COMP).page == f"https://www.kaggle.com/competitions/{COMP}"
    c = KaggleStreamClient.from_target(f"kaggle-competition:{COMP}")
    assert c.identity == f"kaggle-competition:{COMP}" and COMP in repr(c)
    assert KaggleStreamClient.from_target("kaggle:a/b").identity == "kaggle:a/b"
    assert KaggleStreamClient().identity == f"kaggle:{REF}"  # the default stays NIH
    with pytest.raises(ValueError, match="not both"):
        KaggleStreamClient("a/b", competition=COMP)


def test_open_archive_competition_keys_the_index_cache_by_identity_and_version(comp, tmp_path, monkeypatch):
    """``kaggle-competition:SLUG`` through open_archive: the index cache is reused for the same
    competition version, and kept apart from a dataset with the very same bytes and from a new version."""
    from imgae_dx.config import DataConfig, HttpConfig
    from imgae_dx.streaming.sources import open_archive

    monkeypatch.setenv("KAGGLE_USERNAME", USER)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    cache = tmp_path / "idx"
    cfg = DataConfig(index_cache_dir=str(cache), http=HttpConfig(retries=3, backoff_s=0.001, timeout_s=10))
    storage = comp.competition(COMP).storage
    with open_archive(f"kaggle-competition:{COMP}", cfg) as a:
        assert a.identity == f"kaggle-competition:{COMP}" and a.reader.version == storage.etag.strip('"')
        assert a.reader.size == comp.competition(COMP).archive.stat().st_size
        assert {n: a.read_member(n) for n in comp.members} == comp.members
    assert len(list(cache.glob("*.npz"))) == 1
    parse = ArchiveIndex.parse
    parsed: list[str] = []
    monkeypatch.setattr(ArchiveIndex, "parse", classmethod(lambda cls, r: parsed.append(r.identity) or parse(r)))
    with open_archive(f"kaggle-competition:{COMP}", cfg) as a:  # same version: the cached index
        assert len(a.index) == len(comp.members)
    assert parsed == []
    with open_archive(f"kaggle:{REF}", cfg) as a:  # the very same bytes as a dataset: its own index
        assert a.identity == f"kaggle:{REF}"
    assert parsed == [f"kaggle:{REF}"] and len(list(cache.glob("*.npz"))) == 2
    make_zip(tmp_path / "v2.zip", seed=1, n=6)
    comp.replace_archive(COMP, tmp_path / "v2.zip")
    with open_archive(f"kaggle-competition:{COMP}", cfg) as a:  # a new version (ETag): re-indexed
        assert len(a.index) == 7 and a.reader.version == storage.etag.strip('"')
    assert parsed[-1] == f"kaggle-competition:{COMP}" and len(list(cache.glob("*.npz"))) == 3
