"""The HTML report: built from a synthetic run folder, self-contained, renders in headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from imgae_dx.errors import RunFolderError
from imgae_dx.evaluation.results import Evaluation, write_evaluation
from imgae_dx.evaluation.score_files import SCORE_FIELDS, load_examples, save_examples
from imgae_dx.evaluation.summary import summarise_scores
from imgae_dx.run.records import TrainRecord, ValRecord, to_json
from imgae_dx.visualization.report import write_report

FINDINGS = ["Atelectasis", "Effusion", "Nodule", "Mass"]
#: eval/metrics.json of a tiny demo run as written before the format tag (tests/evaluation/test_results.py)
OLD_METRICS = Path(__file__).parents[1] / "evaluation" / "data" / "metrics_40cadb8.json"


def make_run_folder(root: Path, seed: int = 0, n: int = 240, evaluated: bool = True) -> Path:
    """A run folder as training + evaluation leave it, with synthetic but self-consistent content."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 42\nmodels: [unet, ra]\ndata:\n  image_size: 64\n  view: PA\n")
    with (run / "metrics.jsonl").open("w") as f:
        step, t = 0, 1_700_000_000.0
        for si, stage in enumerate(["images_001", "images_002", "images_003"]):
            for _ in range(15):
                step += 1
                t += 2.0
                for mi, m in enumerate(["unet", "ra"]):
                    f.write(json.dumps(to_json(TrainRecord(
                        step=step, stage=stage, stage_index=si + 1, epoch=0, model=m,
                        loss=0.1 / (1 + step * 0.05) + 0.01 * mi, lr=1e-3,
                        images_per_s=40 + rng.normal(), rss_mb=600 + step, elapsed_s=t,
                        images_seen=4 * step))) + "\n")
            for m in ["unet", "ra"]:
                v = 0.05 / (1 + si)
                f.write(json.dumps(to_json(ValRecord(
                    step=step, stage=stage, stage_index=si + 1, epoch=0, model=m, val_loss=v,
                    val_images=10, selection_loss=v, selection_images=10 * (si + 1),
                    selection_stages=si + 1, best_loss=v, improved=True, val_s=0.5,
                    rss_mb=600 + step, elapsed_s=t))) + "\n")
        f.write('{"step": 99, "torn')  # a crash mid-write leaves a torn last line
    if not evaluated:
        return run
    labels = (rng.random(n) < 0.4).astype(int)
    patients = [f"p{i // 2:05d}" for i in range(n)]
    views = rng.choice(["PA", "AP"], n).tolist()
    findings = [tuple(rng.choice(FINDINGS, rng.integers(1, 3), replace=False)) if y else ("No Finding",)
                for y in labels]
    scores = {"unet": rng.normal(size=n) + 1.2 * labels, "ra": rng.normal(size=n) + 0.8 * labels}
    with (run / "eval" / "scores.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*SCORE_FIELDS, "unet", "ra"])
        for i in range(n):
            w.writerow([f"{i:08d}_000.png", patients[i], views[i], "images_001", "|".join(findings[i]),
                        labels[i], scores["unet"][i], scores["ra"][i]])
    loc = {m: [{"image": f"{i:08d}_000.png", "finding": "Mass", "hit": float(rng.random() < 0.5),
                "hit_chance": 0.3, "top_share": 0.2, "area_share": 0.05, "pixel_auroc": 0.7}
               for i in range(5)] for m in scores}
    s = summarise_scores(labels, scores, patients=patients, views=views, findings=findings,
                         localisation=loc, n_bootstrap=200, seed=0)
    write_evaluation(run / "eval", Evaluation(models=s.models, comparisons=s.comparisons, counts=s.counts,
                                              bootstrap=s.bootstrap, source="/tmp/sample/data.zip",
                                              synthetic_data=True))
    for m in scores:
        items = []
        for k in range(3):
            img = rng.random((64, 64))
            items.append({"image_id": f"{k:08d}_000.png", "title": f"{m} #{k} score {k:.2f}", "image": img,
                          "reconstruction": np.clip(img + 0.05 * rng.normal(size=img.shape), 0, 1),
                          "anomaly_map": rng.random((64, 64)), "boxes": [("Mass", 10.0, 12.0, 20.0, 16.0)] if k == 0 else []})
        save_examples(run / "eval" / "examples" / f"{m}.npz", items)
    return run


def test_report_is_self_contained_with_every_plot(tmp_path):
    run = make_run_folder(tmp_path)
    out = write_report(run)
    assert out == run / "report.html"
    doc = out.read_text()
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == sorted(["roc_pr.png", "score_histograms.png", "per_finding_auroc.png", "loss.png",
                           "throughput_memory.png", "examples_unet.png", "examples_ra.png"])
    # every figure is embedded, as valid PNG, and nothing points outside the file
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"', doc)
    assert len(imgs) == len(pngs)
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", doc)
    assert "<script" not in doc.lower() and "<link rel=stylesheet" not in doc.lower()
    # the numbers the page shows are those of eval/metrics.json
    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert f"{m['models']['unet']['auroc']:.3f}" in doc
    lo, hi = m["models"]["unet"]["auroc_ci"]
    assert f"{lo:.3f}" in doc and f"{hi:.3f}" in doc
    assert "DeLong p" in doc and "0.60–0.78" in doc and "synthetic sample dataset" in doc
    assert "images_003" in doc and "image_size: 64" in doc


def test_report_of_a_run_evaluated_before_the_format_tag_still_renders(tmp_path):
    """``metrics.json`` as the evaluator wrote it before the tag (commit 40cadb8): the same page."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    shutil.copy(OLD_METRICS, run / "eval" / "metrics.json")
    (run / "config.yaml").write_text("seed: 42\nmodels: [unet, ra]\n")
    doc = write_report(run).read_text()
    m = json.loads(OLD_METRICS.read_text())
    u, c = m["models"]["unet"], m["comparison"]
    assert (f"Highest test AUROC (descriptive): <b>unet</b>, <b>{u['auroc']:.3f}</b> (95% CI "
            f"{u['auroc_ci'][0]:.3f}–{u['auroc_ci'][1]:.3f}) on 33 test images · unet vs ra: ΔAUROC "
            f"{c['diff']:.3f}, DeLong p = {c['delong_p']:.3f}") in doc
    assert f"{u['operating_point']['threshold']:.5f}" in doc and "<h2>Operating point</h2>" in doc
    assert f"{u['localisation']['hit_rate']:.3f}" in doc and "Atelectasis" in doc
    assert "<b>Protocol:</b> official patient-disjoint lists" in doc and "0.60–0.78" in doc
    assert "bbox boxes" in doc and "images_001: 16" in doc and "synthetic sample dataset" in doc
    assert {p.name for p in (run / "plots").glob("*.png")} == {"roc_pr.png", "per_finding_auroc.png"}


def test_report_before_evaluation_says_so(tmp_path):
    run = make_run_folder(tmp_path, evaluated=False)
    doc = write_report(run).read_text()
    assert "Not evaluated yet" in doc
    assert (run / "plots" / "loss.png").is_file() and not (run / "plots" / "roc_pr.png").exists()


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="not an ImgAE-Dx run folder"):
        write_report(tmp_path)


def test_examples_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.random((32, 32))
    p = save_examples(tmp_path / "eval" / "examples" / "unet.npz",
                      [{"image_id": "a.png", "title": "t", "image": img, "reconstruction": img,
                        "anomaly_map": img, "boxes": [("Mass", 1, 2, 3, 4)]}])
    assert p.is_file()
    (it,) = load_examples(tmp_path / "eval", "unet")
    assert it["image"].dtype == np.uint8 and abs(it["image"] / 255.0 - img).max() < 0.003
    assert it["boxes"] == [("Mass", 1.0, 2.0, 3.0, 4.0)] and it["title"] == "t"


# ------------------------------------------------------------------------------ headless Chromium
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


_HOOK_JS = """<script>
window.__errs = [];
(function () {
  var oe = console.error, ow = console.warn;
  console.error = function () { window.__errs.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); oe.apply(console, arguments); };
  console.warn = function () { window.__errs.push('console.warn: ' + Array.prototype.join.call(arguments, ' ')); ow.apply(console, arguments); };
  window.addEventListener('error', function (e) {
    var t = e.target || {};
    window.__errs.push(t.tagName ? ('failed to load ' + t.tagName + ' ' + (t.alt || t.src || t.href || '')) : ('error: ' + e.message));
  }, true);
})();
</script>"""

_CHECK_JS = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var pre = document.createElement('pre');
  pre.id = 'imgae-check';
  pre.textContent = 'IMGCHECK' + JSON.stringify({n: imgs.length, broken: bad, page_errors: window.__errs,
      height: document.body.scrollHeight}) + 'ENDCHECK';
  document.body.appendChild(pre);
});
</script>"""


def _chromium_args(exe: str, profile: Path) -> list[str]:
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000"]


def render_check(html_path: Path, work: Path, screenshot: Path | None = None) -> dict:
    """Open a page in headless Chromium; return loaded-image stats and console errors.

    Images: a copy of the page with a load-time probe is dumped (``--dump-dom``); the probe lists
    every ``<img>`` whose ``naturalWidth`` is 0. Console: the original page is rendered (and a
    screenshot taken) with Chromium's log on stderr, where console messages appear as ``CONSOLE``.
    """
    exe = _chromium()
    assert exe is not None
    work.mkdir(parents=True, exist_ok=True)
    probe = work / "probe.html"
    text = html_path.read_text()
    head = re.search(r"<head[^>]*>", text, re.I)
    assert head, f"{html_path} has no <head>"
    text = text[: head.end()] + _HOOK_JS + text[head.end():]
    probe.write_text(text.replace("</body>", _CHECK_JS + "</body>"))
    env = dict(os.environ, HOME=str(work))
    r = subprocess.run(_chromium_args(exe, work / "p1") + ["--dump-dom", probe.as_uri()],
                       capture_output=True, text=True, timeout=120, env=env)
    m = re.search(r'id="imgae-check">IMGCHECK(.*?)ENDCHECK', r.stdout, re.S)
    assert m, f"chromium did not render the page (rc={r.returncode}): {r.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"'))
    args = _chromium_args(exe, work / "p2") + ["--enable-logging=stderr", "--v=0",
                                               "--window-size=1200,2400"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    r2 = subprocess.run(args + [html_path.as_uri()], capture_output=True, text=True, timeout=120, env=env)
    # The report has no script: any console message at all (Chromium logs them as CONSOLE lines,
    # without their level) means something went wrong, as does any error event seen by the probe.
    console = [ln for ln in r2.stderr.splitlines() if ":CONSOLE" in ln]
    errors = list(result.get("page_errors", [])) + console
    result.update(console=console, console_errors=errors, rc=r2.returncode)
    return result


needs_chromium = pytest.mark.skipif(
    _chromium() is None,
    reason="headless Chromium not installed (apt-get install chromium; .ci/run installs it)",
)


@needs_chromium
@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    run = make_run_folder(tmp_path)
    report = write_report(run)
    shot = run / "report_screenshot.png"
    res = render_check(report, tmp_path / "chromium", screenshot=shot)
    n_expected = len(list((run / "plots").glob("*.png")))
    assert res["n"] == n_expected, res
    assert res["broken"] == [], f"images that did not load: {res['broken']}"
    assert res["console_errors"] == [], res["console_errors"]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("IMGAE_DX_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report_screenshot.png")


@needs_chromium
@pytest.mark.slow
def test_render_check_catches_broken_images_and_console_errors(tmp_path):
    """The checker itself can fail: a broken image and a console error are both reported."""
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><link rel=icon href='data:,'></head><body>"
                    '<img alt="broken" src="data:image/png;base64,AAAA">'
                    "<script>console.error('boom from test')</script></body></html>")
    res = render_check(page, tmp_path / "chromium")
    assert res["n"] == 1 and res["broken"] == ["broken"]
    assert any("console.error: boom from test" in e for e in res["page_errors"]), res
    assert any("failed to load IMG broken" in e for e in res["page_errors"]), res
    assert any("boom from test" in ln for ln in res["console"]), res
