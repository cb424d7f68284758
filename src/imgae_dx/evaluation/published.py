"""Published image-level AUROCs of unsupervised (train-on-normal) detectors, per dataset: the one
table the report prints beside a run's own figures, with the image size each was measured at.

Figures are as the cited papers report them on the same dataset and protocol; a run at another
image size, or on another split, is not directly comparable — the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedFigure:
    """One published result: ``auroc`` (or a range ``auroc``–``auroc_high``) at ``image_size`` px
    (None: not recorded here), from ``source``."""

    method: str
    auroc: float
    source: str
    image_size: int | None = None
    auroc_high: float | None = None

    @property
    def auroc_text(self) -> str:
        """``0.876``, or a range ``0.600–0.780``."""
        return f"{self.auroc:.3f}" + (f"–{self.auroc_high:.3f}" if self.auroc_high is not None else "")


_SQUID = "SQUID (Xiang et al., CVPR 2023), ZhangLab test split"
_AE4AD = "AE4AD / MedIAnomaly (Cai et al.), RSNA"
_BMAD = "BMAD (Bao et al.), RSNA"

#: dataset name → published figures, best first within each source.
PUBLISHED: dict[str, tuple[PublishedFigure, ...]] = {
    "nih": (
        PublishedFigure("unsupervised train-on-normal detectors (range of published results)", 0.60,
                        "NIH ChestX-ray14 literature", auroc_high=0.78),
    ),
    "zhanglab": (
        PublishedFigure("SQUID", 0.876, _SQUID, 128),
        PublishedFigure("MemAE", 0.778, _SQUID, 128),
        PublishedFigure("M-KD", 0.741, _SQUID, 128),
        PublishedFigure("CutPaste", 0.739, _SQUID, 128),
    ),
    "rsna": (
        PublishedFigure("best autoencoder", 0.729, _AE4AD, 64),
        PublishedFigure("AE", 0.675, _AE4AD, 64),
        PublishedFigure("CS-Flow", 0.832, _BMAD),
        PublishedFigure("PatchCore", 0.761, _BMAD),
    ),
}


def published_for(dataset: str) -> tuple[PublishedFigure, ...]:
    """The published figures of ``dataset`` (none for one's own folder)."""
    return PUBLISHED.get(dataset, ())
