"""``MODEL_CARD.md`` of an exported model: what it was trained on, how well it did, what it is for.

Built only from what the bundle's ``config.json`` (a
:class:`~imgae_dx.inference.bundle_format.BundleConfig`) and calibration hold and, when the run was
evaluated, its ``eval/metrics.json``; a missing part is said to be missing, never invented. Every
model of a run has a text, the PCA baseline included; the training source is the archive's
identity (name, size, version), never a local path.
"""

from __future__ import annotations

import math
from typing import Any

from imgae_dx.data.datasets.registry import spec as dataset_spec
from imgae_dx.evaluation.published import published_for
from imgae_dx.evaluation.results import Evaluation
from imgae_dx.inference.bundle_format import BundleConfig, SourceIdentity
from imgae_dx.run.calibration import DEFAULT_SPECIFICITY, Calibration

ARCHITECTURES = {
    "unet": "U-Net trained as a denoising autoencoder (coarse noise on the input, clean target)",
    "ra": "Reversed Autoencoder (Bercea et al., MIDL 2023): Soft-IntroVAE with a reversed-embedding loss",
    "ae": "plain convolutional autoencoder with a small dense bottleneck (the published baseline)",
    "pca": "PCA baseline: reconstruction by the top-k principal components of the training normals "
           "(k chosen on the validation normals; no gradient training)",
}


RESIZE_TEXT = {
    "squash": "area resize of the whole image to the square input; a non-square image is stretched",
    "pad": "the long side resized to the input, the short side padded with black",
    "crop": "the centred square, then area resize; a non-square image loses its ends",
}


#: dataset → (which images are its normals, where its images come from, what it has not seen)
TRAINING_POPULATION = {
    "nih": ("the images labelled *No Finding*", "adult chest radiographs of one US hospital (NIH "
            "Clinical Center)", "paediatric patients, other hospitals' scanners and other modalities"),
    "zhanglab": ("the NORMAL images", "paediatric chest radiographs (children aged 1–5, one hospital "
                 "in Guangzhou)", "adult patients, other hospitals' scanners and other modalities"),
    "rsna": ("the patients of class *Normal*", "adult chest radiographs (NIH ChestX-ray14 DICOMs "
             "labelled by RSNA)", "paediatric patients, other hospitals' scanners and other modalities"),
    "folder": ("the images under `normal/` (or labelled normal)", "the images of its training folder",
               "images from other hospitals, scanners, patient groups or modalities"),
}


def _published(dataset: str) -> str:
    figs = published_for(dataset)
    if not figs:
        return "- No published figures for this data: compare with the PCA baseline of the same run."
    parts = [f"{f.method} {f.auroc_text}" + (f" at {f.image_size} px" if f.image_size else "") for f in figs]
    return ("- Published image-level AUROCs on this dataset (" + "; ".join(sorted({f.source for f in figs}))
            + "): " + ", ".join(parts) + ".")


def _n(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _source(s: SourceIdentity) -> str:
    facts = [f"{s.size:,} bytes" if s.size is not None else "", f"version {s.version}" if s.version else ""]
    extra = "; ".join(f for f in facts if f)
    return f"`{s.name}` ({s.kind}{'; ' + extra if extra else ''})"


def _weights(config: BundleConfig) -> str:
    if config.model == "pca":
        return (f"`model.safetensors` (the training mean, {config.model_cfg.max_components} "
                "principal components and k)")
    return "`model.safetensors` (weights)"


def model_card(config: BundleConfig, cal: Calibration, metrics: Evaluation | None) -> str:
    """The Markdown text (see the module doc); ``metrics``: the run's evaluation, if any."""
    name = config.model
    ck = config.checkpoint
    an = config.anomaly
    score = f"top {an['topk_percent']:g} % mean" if an["score"] == "topk" else an["score"]
    thr = cal.threshold(DEFAULT_SPECIFICITY)
    synthetic = bool(metrics and metrics.synthetic_data)
    normals, population, unseen = TRAINING_POPULATION[config.dataset]
    lines = [
        f"# ImgAE-Dx model card: `{name}`",
        "",
        f"**{ARCHITECTURES[name]}**, {config.image_size}×{config.image_size} px grayscale input, "
        f"anomaly map `{an['map']}`, image score = {score} of the map. Written by imgae-dx "
        f"{config.package_version}.",
        "",
        "## Intended use and limits",
        "",
        "- **Research only.** Not a medical device; not validated for diagnosis, triage or any "
        "clinical decision.",
        f"- Unsupervised: trained on {normals} only; it scores how unlike those normals an image "
        "looks. Findings that look normal to it are missed, and unusual normal images (devices, "
        "positioning, other scanners) are flagged.",
        f"- Trained on {population}, view cohort `{config.view}`: {unseen} are outside what it "
        "has seen.",
        _published(config.dataset),
        "",
        "## Training data",
        "",
        f"- Source: {_source(config.source)}" + (" (synthetic sample dataset: figures below say "
                                                  "nothing about real X-rays)" if synthetic else ""),
        f"- Stages: {', '.join(ck.stages) or 'n/a'}; checkpoint from stage "
        f"`{ck.stage or 'n/a'}` (K = {ck.stage_k or 'n/a'})",
        f"- Dataset: `{config.dataset}` ({dataset_spec(config.dataset).title}); views: `{config.view}`",
        f"- Split: {dataset_spec(config.dataset).protocol}",
        f"- Steps: {ck.step}; images seen: {_n(ck.images_seen)}; precision: {_n(ck.precision)}",
        f"- Validation loss (normal validation images) of these weights: {_n(ck.val_loss, 5)}",
        "",
        "## Calibration (no test image used)",
        "",
        f"- {cal.n} normal validation images (stages {', '.join(cal.source.stages) or 'n/a'}, view "
        f"`{cal.source.view or '?'}`), scored with `{cal.source.checkpoint}` (step {cal.source.step}).",
        f"- Threshold at {DEFAULT_SPECIFICITY:.0%} target specificity: score > {thr:.6g} "
        "(`imgae-dx predict --specificity S` picks another).",
        f"- Heat-map colour scale: 0 … {cal.map_vmax:.4g} (99.9th percentile of the normal maps).",
        "",
        "## Preprocessing",
        "",
        f"- Resize: `{config.preprocessing.resize}`, the policy the model was trained with "
        f"({RESIZE_TEXT[config.preprocessing.resize]}); JPEG EXIF orientation applied.",
        "",
        "## Test metrics",
        "",
    ]
    m = metrics.models[name] if metrics and name in metrics.models else None
    if metrics is None or m is None:
        lines.append("Not evaluated (run `imgae-dx evaluate --run RUN_DIR` before exporting).")
    else:
        c = metrics.counts
        ci = m.auroc_ci
        lines += [
            f"Held-out test patients: {_n(c.images)} images ({_n(c.normal)} normal, "
            f"{_n(c.abnormal)} abnormal), view `{metrics.view or '?'}`.",
            "",
            "| metric | value |",
            "|---|---|",
            f"| AUROC [95% CI] | {_n(m.auroc)} [{_n(ci[0])}, {_n(ci[1])}] |",
            f"| AUPRC | {_n(m.auprc)} |",
            f"| FPR at 95% TPR | {_n(m.fpr_at_95_tpr)} |",
            f"| sensitivity at 90% specificity | {_n(m.sensitivity_at_90_specificity)} |",
        ]
        op = m.operating_point
        if op is not None and op.threshold is not None:
            lines.append(f"| at the calibrated threshold ({op.target_specificity:.0%} target): "
                         f"specificity / sensitivity | {_n(op.specificity)} / {_n(op.sensitivity)} |")
    lines += ["", "## Files", "",
              f"{_weights(config)}, `config.json` (architecture, preprocessing, anomaly map "
              "and score, checkpoint facts), `calibration.json` (the normal validation scores)"
              + (", `model.onnx` (image → reconstruction, anomaly map, score)" if config.onnx else "")
              + ". Load with `imgae_dx.load(BUNDLE_DIR)` or `imgae-dx predict … --model BUNDLE_DIR`.", ""]
    return "\n".join(lines)
