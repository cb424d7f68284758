"""Network faults during real training runs: the archive served over loopback HTTP by the range
server (resets, short and slow bodies, 5xx, 429, flipped bytes), expiring signatures and a dataset
that changes version under a running job.

"Nothing lost" is checked the strict way: the faulted run trains on exactly the image ids, in the
same order, as a clean run, skips nothing, and ends with bit-identical weights.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from reliability_helpers import FAST_HTTP, Seen, final_weights, tiny_config, tiny_yaml

from imgae_dx.cli import main
from imgae_dx.errors import CheckpointError, DatasetChangedError, SourceError
from imgae_dx.testing import Faults, RangeServer
from imgae_dx.training.streaming_trainer import StreamingTrainer

pytestmark = pytest.mark.network

MODELS = ("ae",)  # the data path is under test: the cheapest model is enough


def _train(source: str, out: Path, seen: Seen | None = None, *, resume: bool = False, **over):
    # ~1 image per range request: many requests, so even 5 % faults hit several of them
    # and no cache, two epochs: every epoch goes to the network again
    over = {"data.max_request_mb": 0.03, "data.cache": "off", "training.epochs_per_stage": 2, **over}
    cfg = tiny_config(source, out, models=list(MODELS), **{**FAST_HTTP, **over})
    tr = StreamingTrainer(cfg, resume=resume, on_batch=seen)
    res = tr.train_progressive_stages()
    skipped = sum(ds.stats()["skipped"] for ds in tr.data.train.values())
    return res, skipped


@pytest.fixture(scope="module")
def served(small_archive, tmp_path_factory) -> Path:
    """A private copy of the sample archive (servers below serve and sometimes replace it)."""
    d = tmp_path_factory.mktemp("served")
    return Path(shutil.copy(small_archive, d / "data.zip"))


@pytest.fixture(scope="module")
def clean(served, tmp_path_factory):
    """The reference: the same archive over HTTP with no fault at all."""
    out = tmp_path_factory.mktemp("clean") / "run"
    seen = Seen()
    with RangeServer(served) as srv:
        res, skipped = _train(srv.url, out, seen)
        assert sum(srv.counts()["faults"].values()) == 0
    assert not res.interrupted and skipped == 0 and len(seen.ids) >= 20
    return seen.ids, final_weights(out, MODELS), res.step


@pytest.mark.parametrize("rate", [0.05, 0.20, 0.50])
def test_training_under_faults_sees_exactly_the_clean_images(served, clean, tmp_path, rate):
    ids, weights, steps = clean
    seen = Seen()
    # every fault kind, flipped bytes included (CRC-32 catches them; the member is re-read); the
    # tail (central directory, no checksum of its own) is left alone so a flip cannot hide there
    faults = Faults.uniform(rate, seed=int(rate * 1000), corrupt=True, slow_s=0.02,
                            apply_to_tail=False)
    t = time.perf_counter()
    with RangeServer(served, faults=faults) as srv:
        res, skipped = _train(srv.url, tmp_path / "run", seen)
        counts = srv.counts()
        injected = counts["faults"]
    assert not res.interrupted and res.step == steps
    assert sum(injected.values()) >= (1 if rate < 0.1 else 5), counts
    assert skipped == 0
    assert seen.ids == ids  # same images, same order, none missing, none twice
    assert final_weights(tmp_path / "run", MODELS) == weights
    assert time.perf_counter() - t < 120  # never hangs


def test_all_requests_failing_stops_with_a_clear_error_and_resume_loses_nothing(
    served, clean, tmp_path, capsys
):
    """100 % faults mid-run: the retry budget runs out quickly with an error naming the source and
    byte range; last.pt is intact; once the network is back, --resume ends exactly like a clean run."""
    ids, weights, _ = clean
    out = tmp_path / "run"
    seen = Seen()
    with RangeServer(served) as srv:

        def outage(stage, epoch, batch, n):
            if stage == "images_002" and srv.faults.error_5xx == 0:
                srv.set_faults(Faults(reset=0.5, error_5xx=0.5, seed=3))

        seen.hooks.append(outage)
        t = time.perf_counter()
        with pytest.raises(SourceError) as ei:
            _train(srv.url, out, seen, **{"data.http.retries": 3})
        assert time.perf_counter() - t < 60
        msg = str(ei.value)
        assert srv.url in msg and "4 tries" in msg and "bytes " in msg, msg
        # the CLI says it in one line, exit 2, no traceback
        srv.set_faults(Faults(error_5xx=1.0))
        cfg_file = tiny_yaml(tmp_path / "tiny.yaml", **{**FAST_HTTP, "data.http.retries": 2})
        assert main(["train", "--config", str(cfg_file), "--source", srv.url,
                     "--out", str(tmp_path / "cli"), "--model", "ae"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and srv.url in err
        # the network comes back: resume from last.pt
        srv.set_faults(Faults())
        again = Seen()
        res, skipped = _train(srv.url, out, again, resume=True)
    assert not res.interrupted and skipped == 0
    assert res.resumed_from_step is not None and res.resumed_from_step > 0
    # the resumed run trains on the tail of the clean order, from the checkpointed position
    assert again.ids == ids[len(ids) - len(again.ids):]
    assert final_weights(out, MODELS) == weights


def test_signature_expiry_mid_stage_through_the_kaggle_sdk(small_archive, clean, tmp_path, monkeypatch):
    """kaggle: source through the real SDK and the loopback Kaggle emulator; every signed URL is
    revoked in the middle of a stage: the reader re-resolves and the run is unaffected."""
    pytest.importorskip("kagglesdk")
    from imgae_dx.testing.kaggle_emulator import KaggleEmulator

    ids, weights, _ = clean
    for k, v in KaggleEmulator.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KAGGLE_USERNAME", "reliability")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    seen = Seen()
    with KaggleEmulator() as kaggle:
        kaggle.add_user("reliability", "0123456789abcdef0123456789abcdef")
        ds = kaggle.add_dataset("nih-chest-xrays/data", small_archive)
        expired = []

        def expire(stage, epoch, batch, n):
            if stage in ("images_001", "images_002") and stage not in expired and n >= 4:
                ds.storage.rotate_key()  # every URL issued so far now answers 403
                expired.append(stage)

        seen.hooks.append(expire)
        res, skipped = _train("kaggle:nih-chest-xrays/data", tmp_path / "run", seen)
        assert expired == ["images_001", "images_002"]
        assert ds.storage.counts()["status"].get(403, 0) >= 1
        assert kaggle.calls["DownloadDataset"] >= 2  # the first resolve + at least one re-resolve
    assert not res.interrupted and skipped == 0
    assert seen.ids == ids
    assert final_weights(tmp_path / "run", MODELS) == weights


def test_etag_change_mid_run_refuses_to_mix_versions(served, tmp_path, capsys):
    """The archive's ETag changes during stage 1: training stops with DatasetChangedError (exit 2
    on the command line) instead of reading byte offsets of one version from another."""
    out = tmp_path / "run"
    seen = Seen()
    with RangeServer(served, etag='"v1"') as srv:

        def new_version(stage, epoch, batch, n):
            if stage == "images_002" and srv.etag == '"v1"':  # after stage 1's checkpoints
                srv.replace_file(etag='"v2"')

        seen.hooks.append(new_version)
        with pytest.raises(DatasetChangedError, match="changed version") as ei:
            _train(srv.url, out, seen)
        assert '"v1"' in str(ei.value) and '"v2"' in str(ei.value)
        assert srv.url in str(ei.value)


def test_resume_on_a_new_dataset_version_is_refused(served, tmp_path):
    """A run checkpointed on version v1, resumed when the archive answers with v2: the resume must
    refuse (the saved positions index members of v1), not continue silently."""
    out = tmp_path / "run"
    seen = Seen()
    with RangeServer(served, etag='"v1"') as srv:

        def stop_in_stage_2(stage, epoch, batch, n):
            if stage == "images_002":
                trainer_box[0].request_stop()

        trainer_box: list = []
        seen.hooks.append(stop_in_stage_2)
        cfg = tiny_config(srv.url, out, models=list(MODELS), **FAST_HTTP)
        trainer_box.append(StreamingTrainer(cfg, on_batch=seen))
        assert trainer_box[0].train_progressive_stages().interrupted
        srv.replace_file(etag='"v2"')
        with pytest.raises(CheckpointError, match="no longer the archive"):
            StreamingTrainer(cfg, resume=True).train_progressive_stages()
