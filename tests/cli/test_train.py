"""``imgae-dx train`` flag → config mapping (the training itself is tested in tests/training)."""

from __future__ import annotations

from imgae_dx.cli import build_parser
from imgae_dx.cli.train import build_config, overrides_from_args


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_flags_map_to_config_keys(tmp_path):
    a = _args("--source", "x.zip", "--stages", "images_001,images_002", "--epochs-per-stage", "3",
              "--model", "all", "--image-size", "64", "--batch-size", "8", "--out", str(tmp_path),
              "--device", "cpu", "--logger", "tensorboard")
    cfg = build_config(a)
    assert cfg.models == ["unet", "ra", "ae", "pca"]  # all: the deep models and the baseline
    assert cfg.stages == ["images_001", "images_002"]
    assert (cfg.source, cfg.out) == ("x.zip", str(tmp_path))
    assert (cfg.training.epochs_per_stage, cfg.training.batch_size, cfg.training.device) == (3, 8, "cpu")
    assert (cfg.data.image_size, cfg.logging.logger) == (64, "tensorboard")
    assert build_config(_args("--model", "ra")).models == ["ra"]
    assert overrides_from_args(_args())["models"] is None  # not given: the config decides


def test_resume_starts_from_the_run_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    first = build_config(_args("--out", str(run), "--model", "ae", "--image-size", "64"))
    (run / "config.yaml").write_text(first.to_yaml())
    again = build_config(_args("--out", str(run), "--resume"))
    assert again.models == ["ae"] and again.data.image_size == 64
    # without --resume the defaults apply (and the trainer refuses the folder)
    assert build_config(_args("--out", str(run))).models == ["unet", "ra", "pca"]
