"""Several training seeds: mean ± sd of test AUROC and the unet − ra gap, with the report over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgae_dx.errors import RunFolderError
from imgae_dx.visualization.seeds import aggregate, seed_runs, summary_lines, write_seeds_report


def _metrics(root: Path, seed: int, unet: float, ra: float, ci=(-0.05, 0.07), a="unet") -> None:
    d = root / f"seed-{seed}" / "eval"
    d.mkdir(parents=True)
    diff = unet - ra if a == "unet" else ra - unet
    comp = {"a": a, "b": "ra" if a == "unet" else "unet", "diff": diff, "diff_ci": list(ci), "delong_p": 0.4}
    (d / "metrics.json").write_text(json.dumps({
        "models": {"unet": {"auroc": unet, "auprc": unet - 0.1}, "ra": {"auroc": ra, "auprc": ra - 0.1}},
        "comparison": comp}))


def test_mean_sd_over_seeds_and_the_gap(tmp_path):
    _metrics(tmp_path, 0, 0.70, 0.60)
    _metrics(tmp_path, 1, 0.80, 0.70)
    _metrics(tmp_path, 2, 0.60, 0.65, ci=(-0.1, 0.03), a="ra")  # the pair written the other way round
    (tmp_path / "seed-9").mkdir()  # not evaluated: ignored
    runs = seed_runs(tmp_path)
    assert [r.name for r in runs] == ["seed-0", "seed-1", "seed-2"]
    agg = aggregate(runs)
    u = agg["models"]["unet"]["auroc"]
    assert u["n"] == 3 and u["mean"] == pytest.approx(0.7) and u["sd"] == pytest.approx(0.1)
    g = agg["unet_minus_ra"]
    assert [p["diff"] for p in g["per_seed"]] == pytest.approx([0.1, 0.1, -0.05])
    assert g["per_seed"][2]["ci"] == pytest.approx([-0.03, 0.1])  # sign flipped with the pair
    assert g["mean"] == pytest.approx(0.05)
    lines = summary_lines(agg)
    assert "over 3 seeds" in lines[0] and any(line.startswith("  unet   AUROC 0.700 ± 0.100 (n=3)") for line in lines)
    html = write_seeds_report(tmp_path).read_text()
    assert "3 training seeds" in html and 'href="seed-1/report.html"' in html and "0.700 ± 0.100" in html
    assert json.loads((tmp_path / "seeds.json").read_text())["runs"] == ["seed-0", "seed-1", "seed-2"]


def test_nothing_to_aggregate(tmp_path):
    with pytest.raises(RunFolderError, match="no evaluated seed"):
        aggregate(seed_runs(tmp_path))
