"""``imgae-dx setup-kaggle``: install Kaggle credentials privately and check they work.

Steps: validate and install ``--api-key-path`` (kaggle.json or an access-token file) with mode
0600 in a 0700 folder; say which credential source will be used (environment variables win, as in
Kaggle's own clients); unless ``--no-verify``, resolve the download of ``--dataset``
(``OWNER/SLUG`` or ``kaggle-competition:SLUG``; no body is read) and tell apart rejected
credentials, no network, a missing dataset or competition and a competition whose rules the user
has not accepted. A failed verification leaves the installed file in place and says so. The key is
never printed.

Exit codes: 0 success, 2 invalid input or failed verification.
"""

from __future__ import annotations

import argparse
import sys

from imgae_dx.errors import CredentialsError, UserError
from imgae_dx.streaming.credentials import find_credentials, install_credentials, searched_locations


def _out(msg: str) -> None:
    print(msg, flush=True)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def run(args: argparse.Namespace) -> int:
    """Install (optional) and verify Kaggle credentials. Returns the exit code."""
    from imgae_dx.streaming.kaggle_client import (
        KaggleNetworkError,
        KaggleNotFoundError,
        KaggleRulesNotAcceptedError,
        KaggleStreamClient,
        parse_target,
    )
    from imgae_dx.streaming.retry import RetryPolicy

    target = parse_target(args.dataset)  # bad names fail before anything is written
    installed = None
    if args.api_key_path:
        result = install_credentials(args.api_key_path)
        installed = result.path
        for w in result.warnings:
            _err(f"warning: {w}")
        _out(result.note)
        creds = result.active
    else:
        creds = find_credentials()  # logs its own warnings (a world-readable file, …)
        if creds is not None:
            _out(f"using Kaggle credentials: {creds.describe()}")
    if creds is None:
        raise CredentialsError(
            "no Kaggle credentials found (looked at " + ", ".join(searched_locations()) + "); "
            "run `imgae-dx setup-kaggle --api-key-path kaggle.json`"
        )
    if args.no_verify:
        _out("verification skipped (--no-verify)")
        return 0

    _out(f"verifying: resolving the download of {target} …")
    client = KaggleStreamClient.from_target(args.dataset, credentials=creds,
                                            retry=RetryPolicy(retries=3, backoff_s=0.5, backoff_max_s=8.0))
    kept = f"; {installed} stays installed" if installed else ""
    try:
        resolved = client.verify()
    except CredentialsError as e:
        _err(f"error: bad credentials: {e}{kept}")
        return 2
    except KaggleNetworkError as e:
        _err(f"error: {e}{kept} — rerun `imgae-dx setup-kaggle` when online")
        return 2
    except KaggleNotFoundError as e:
        _err(f"error: {target.kind} not found: {e}{kept} (the credentials themselves were accepted)")
        return 2
    except KaggleRulesNotAcceptedError as e:
        _err(f"error: {e}{kept} (the credentials themselves were accepted)")
        return 2
    except UserError as e:
        _err(f"error: verification failed: {e}{kept}")
        return 2
    finally:
        client.close()
    size = _human(resolved.size) if resolved.size is not None else "size unknown"
    _out(f"OK: Kaggle accepted the credentials; {target.identity} streams from one archive ({size})")
    return 0
