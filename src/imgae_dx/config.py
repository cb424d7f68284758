"""Validated configuration: YAML files + command-line overrides → one :class:`Config`.

Over 500 lines on purpose: one schema — every section's fields with their descriptions and
validators — and the one loader that merges and validates it; the sections refer to each other
(the image size and the models' downsampling, RA's saliency and its embeddings).

Every hyperparameter lives here (nothing hidden in code). ``load_config`` merges, in order,
the packaged defaults (``configs/streaming_config.yaml`` and ``configs/model_configs/*.yaml``),
an optional cloud profile (``configs/cloud_configs/{local,colab}.yaml``), an optional user file,
and dotted overrides (``{"training.batch_size": 16}``). Unknown keys and bad values raise
:class:`ConfigError` naming the key, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgae_dx.errors import UserError

#: every model (torch-free here for the config and the CLI; ``imgae_dx.models.registry`` says
#: what each is, and which are trained by gradient steps)
MODEL_NAMES: tuple[str, ...] = ("unet", "ra", "ae", "pca")


class ConfigError(UserError, ValueError):
    """A configuration value is missing, unknown or invalid (message says which and how to fix)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------- data
class HttpConfig(_Strict):
    timeout_s: float = Field(30.0, gt=0, description="connect/read timeout of one HTTP request")
    retries: int = Field(8, ge=0, description="retries per byte range before giving up")
    backoff_s: float = Field(0.25, ge=0, description="first retry delay; doubles each try, with jitter")
    backoff_max_s: float = Field(30.0, gt=0, description="cap of one retry delay")
    pool_connections: int = Field(8, ge=1, description="pooled keep-alive connections per host")


class DataConfig(_Strict):
    dataset: str | None = Field(
        None, description="the layout and protocol of the source: nih, zhanglab, rsna or folder "
        "(docs/datasets.md); null: nih when the source holds NIH's metadata, else detected from "
        "the layout. A run's config.yaml holds the resolved name")
    image_size: int = Field(128, ge=16, le=1024, description="model resolution in pixels (square)")
    view: Literal["PA", "AP", "all"] = Field(
        "PA", description="view-position cohort of every split (ignored by datasets without "
        "view positions: zhanglab, folder without a view column)")
    val_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of the training patients held out (patient-disjoint) as val"
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="folder: seeded share of the patients without an abnormal "
        "image held out for the test split (with every abnormal image); rsna: seeded share of the "
        "patients of every class held out for the test split")
    images_per_stage: int = Field(
        2500, ge=1, description="datasets other than nih: stages part_001, part_002, … of this "
        "many training images in archive order (NIH keeps its images_NNN folders). 2500 ≈ the PA "
        "training normals of one 10,000-image NIH stage, so a stage costs about as many steps")
    max_request_mb: float = Field(16.0, gt=0, le=256, description="largest coalesced range request")
    gap_bridge_kb: float = Field(
        256.0, ge=0, description="unwanted bytes between members read through instead of splitting"
    )
    requests_in_flight: int = Field(4, ge=1, le=64, description="range requests fetched ahead")
    decode_workers: int = Field(2, ge=1, le=128, description="threads decoding images (PNG, JPEG, DICOM)")
    shuffle_buffer: int = Field(256, ge=1, description="images in the bounded shuffle buffer")
    png_decoder: Literal["auto", "cv2"] = Field(
        "auto", description="auto: libdeflate + C unfilter for 8-bit gray PNGs, libpng for the rest; "
        "cv2: libpng for all (same pixels)"
    )
    resize: Literal["squash", "pad", "crop"] = Field(
        "crop", description="how a non-square image becomes image_size² (training, evaluation, "
        "predict and bundles alike; square images such as NIH's and RSNA's give the same pixels "
        "under all three): crop = the centred square, then area resize (a wide image's sides — "
        "arms, background; at width/height 1.6 the outer 19 % each side — are dropped); squash = "
        "area resize of the whole image, aspect ratio lost; pad = area resize of the long side to "
        "image_size, the short side padded centred with black (0). Default crop, chosen on real "
        "NIH radiographs made 1.1–1.6× wider than tall (rows cut, or black side bands): the PCA "
        "detector scored higher with crop than with squash in each of 5 seeds × 2 views × 2 "
        "distortions at 64 px (one tie at 128 px): AUROC +0.03 to +0.04 with rows cut, +0.01 to "
        "+0.02 with side bands; pad ≈ squash (benchmarks/RESULTS.md, resize_bench.py). Runs saved "
        "before this key existed keep squash"
    )
    cache: Literal["memory", "disk", "persistent", "off"] = Field(
        "persistent", description="preprocessed-image cache: RAM spilling to disk, disk only, on disk "
        "across stages/restarts/runs (persistent), or none"
    )
    cache_dir: str | None = Field(
        None, description="folder of the disk cache (default: run folder; persistent outside a run: "
        "INDEX_CACHE_DIR/images); may be on Google Drive"
    )
    cache_max_gb: float = Field(
        20.0, gt=0, description="bound of a persistent cache folder; other archives' or sizes' images "
        "are evicted first (oldest first), then caching stops"
    )
    memory_budget_mb: float = Field(
        512.0, gt=0, description="bound of the pipeline's buffers (in-flight, shuffle, cache)"
    )
    index_cache_dir: str = Field(
        "~/.cache/imgae_dx", description="where archive indexes persist between runs"
    )
    http: HttpConfig = Field(default_factory=HttpConfig)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str | None) -> str | None:
        from imgae_dx.data.datasets import DATASET_NAMES

        if v is not None and v not in DATASET_NAMES:
            raise ValueError(f"unknown dataset; choose one of {', '.join(DATASET_NAMES)} (or null: detect)")
        return v

    @field_validator("image_size")
    @classmethod
    def _divisible(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be divisible by 32 (e.g. 64, 128, 256), got {v}")
        return v


# ------------------------------------------------------------------------------------- models
class AnomalyConfig(_Strict):
    map: Literal["l1", "l2", "clahe", "ssim"] = Field("l1", description="per-pixel anomaly map")
    score: Literal["mean", "max", "topk"] = Field("mean", description="image score from the map")
    topk_percent: float = Field(1.0, gt=0, le=100, description="top-k %% of pixels for score=topk")
    smoothing_sigma: float = Field(0.0, ge=0, description="Gaussian smoothing of the map (pixels)")
    residual_sigma: float = Field(
        0.0, ge=0, description="l1/l2 maps: Gaussian smoothing (pixels) of the signed residual "
        "x - x̂ before its magnitude, so pixel-scale errors of opposite sign (noise, edges a "
        "pixel off) cancel and deviations at the scale of findings remain; 0 = off")
    clahe_clip: float = Field(
        0.01, gt=0, le=1, description="CLAHE clip limit as skimage's equalize_adapthist takes it"
    )
    clahe_tiles: int = Field(8, ge=1, description="CLAHE kernel = image side / tiles (skimage: 8)")
    saliency: Literal["none", "lpips", "encoder"] = Field(
        "none", description="multiply the map by a perceptual saliency smoothed by "
        "G(saliency_sigma). lpips: the RA authors' G(LPIPS(x̂, x)) · G(LPIPS(CLAHE x̂, CLAHE x)), "
        "LPIPS on SqueezeNet (pretrained weights); encoder: the same idea in the model's own "
        "feature space, G(Σ_levels ‖n(e(x)) − n(e(x̂))‖²) over RA's multi-scale embeddings "
        "(n: unit length over channels, as LPIPS does, without its learned heads); RA only")
    saliency_sigma: float = Field(2.0, gt=0, description="Gaussian σ of the saliency (authors: 2)")
    foreground_threshold: float | None = Field(
        None, ge=0, description="keep the map only on the body: pixels whose 5×5 neighbourhood is "
        "all above this input value (Kascenas et al.: 0.01); null = everywhere")
    border: float = Field(
        0.0, ge=0, lt=0.5, description="zero the map within this share of the side from every "
        "edge, so image borders — text markers, collimation, arms, the neck — score nothing "
        "(0.1 at 64 px: 6 pixels); 0 = off")
    median_filter: int = Field(
        0, ge=0, description="median-filter the map with this odd kernel (Kascenas et al.: 5); 0 = off")
    ssim_window: int = Field(11, ge=3, description="SSIM Gaussian window size (odd)")
    ssim_sigma: float = Field(1.5, gt=0, description="SSIM Gaussian window sigma")

    @field_validator("ssim_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd (e.g. 7, 11), got {v}")
        return v

    @field_validator("median_filter")
    @classmethod
    def _odd_or_off(cls, v: int) -> int:
        if v and (v % 2 == 0 or v < 3):
            raise ValueError(f"must be 0 (off) or an odd kernel ≥ 3 (e.g. 5), got {v}")
        return v


class InputConfig(_Strict):
    normalise: Literal["none", "equalise", "clahe", "robust"] = Field(
        "none", description="per-image exposure normalisation of the model input, applied by the "
        "model and its objective alike (training, PCA fit, evaluation, calibration, predict, "
        "export): none; equalise = global histogram equalisation (256 levels); clahe = OpenCV "
        "CLAHE (clahe_clip, clahe_tiles); robust = clamp((x − q_lo)/(q_hi − q_lo)) between the "
        "image's robust_percentiles. The anomaly map compares the normalised image with its "
        "reconstruction")
    clahe_clip: float = Field(2.0, gt=0, description="normalise: clahe — OpenCV's clipLimit")
    clahe_tiles: int = Field(8, ge=1, description="normalise: clahe — tiles per side (tileGridSize)")
    robust_percentiles: tuple[float, float] = Field(
        (1.0, 99.0), description="normalise: robust — the image's percentiles mapped to 0 and 1")

    @field_validator("robust_percentiles")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"need 0 ≤ low < high ≤ 100, got {list(v)}")
        return v


class OptimConfig(_Strict):
    name: Literal["adam", "adamw"] = Field("adam", description="optimiser (RA: one per encoder/decoder)")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="adam: L2 in the gradient; adamw: decoupled")
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = Field(False, description="AMSGrad variant (Kascenas et al.'s DAE uses it)")


class UNetConfig(_Strict):
    depth: int = Field(5, ge=2, le=7, description="resolution levels")
    base_channels: int = Field(64, ge=4, description="channels of the first level, doubled per level")
    groups: int = Field(8, ge=1, description="GroupNorm groups")
    skip_connections: bool = True
    noise_std: float = Field(0.2, ge=0, description="std of the coarse denoising noise (0 = plain AE)")
    noise_resolution: int = Field(16, ge=1, description="grid the noise is drawn at, then upsampled")
    output_activation: Literal["sigmoid", "linear"] = Field(
        "sigmoid", description="last layer: sigmoid keeps reconstructions in [0, 1]"
    )
    conv: Literal["standard", "ws"] = Field(
        "standard", description="ws: weight-standardised 3×3 convolutions (Kascenas et al.)")
    padding: Literal["zeros", "reflect"] = Field(
        "zeros", description="padding of the 3×3 convolutions (Kascenas et al.: reflect)")
    noise_roll: bool = Field(
        False, description="shift the upsampled noise by a random (dy, dx), wrapping around "
        "(Kascenas et al.): the noise grid is not tied to image positions")
    noise_foreground_threshold: float | None = Field(
        None, ge=0, description="add noise only where the input exceeds this value (Kascenas "
        "et al.: 0.01); null = everywhere")
    inference_samples: int = Field(
        0, ge=0, description="0: score the reconstruction of x itself (Kascenas et al.); K > 0: "
        "the mean reconstruction of K corruptions of x by the training noise (K fixed noise "
        "fields, the same for every image): the denoiser replaces what it takes for noise, "
        "findings included, with normal anatomy (AnoDDPM's noise-then-restore, Wyatt et al. 2022)")
    inference_noise_seed: int = Field(
        0, ge=0, description="seed of the inference_samples noise fields (drawn once per model)")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4))
    input: InputConfig = Field(default_factory=InputConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)

    @model_validator(mode="after")
    def _samples_need_noise(self) -> UNetConfig:
        if self.inference_samples and self.noise_std <= 0:
            raise ValueError(
                f"inference_samples={self.inference_samples} corrupts the input with the training "
                "noise, but noise_std is 0 (a plain autoencoder): set inference_samples: 0")
        return self


class RAConfig(_Strict):
    zdim: int = Field(128, ge=2, description="latent size")
    channels: tuple[int, ...] = Field(
        (64, 128, 256, 512, 512),
        description="encoder widths; one average-pooled scale (embedding) each; decoder reversed",
    )
    beta_rec: float = Field(0.5, gt=0, description="weight of the reconstruction error")
    beta_kl: float = Field(1.0, ge=0, description="weight of the KL term on real data")
    beta_neg: float = Field(128.0, ge=0, description="KL weight inside the expELBO of fakes")
    gamma_r: float = Field(1e-8, ge=0, description="decoder weight of rec-of-rec / rec-of-fake terms "
                           "(0: those terms and their two decoder passes are skipped)")
    exp_elbo_weight: float = Field(0.25, ge=0, description="encoder weight of the two expELBO terms")
    embedding_weight: float = Field(0.005, ge=0, description="weight of the reversed-embedding loss")
    inference_samples: int = Field(
        0, ge=0, description="0: reconstruct from z = mu; K > 0: average K decodes of sampled z "
        "(the authors' scoring samples z; the noise is seeded by each image's pixels)")
    lrelu_slope: float = Field(0.2, ge=0, description="LeakyReLU negative slope (paper: 0.2)")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-5))
    input: InputConfig = Field(default_factory=InputConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)


class AEConfig(_Strict):
    latent_dim: int = Field(16, ge=1, description="size of the fully connected bottleneck")
    channels: tuple[int, ...] = Field(
        (32, 64, 128, 256), description="encoder widths, one stride-2 conv each (reversed in decoder)"
    )
    lrelu_slope: float = Field(0.2, ge=0, description="LeakyReLU negative slope")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-3))
    input: InputConfig = Field(default_factory=InputConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)


class PCAConfig(_Strict):
    max_components: int = Field(128, ge=1, description="principal components fitted (k ≤ this)")
    fit_images: int = Field(
        2048, ge=2, description="training normals the components are fitted on, spread evenly "
        "over the stages (deterministic choice)")
    explained_variance: float = Field(
        0.95, gt=0, le=1, description="k = the fewest components explaining this share of the "
        "validation normals' variance (k is chosen on validation normals only)")
    components: int | None = Field(
        None, ge=1, description="a fixed k (at most max_components, and at most the training "
        "images): the yardstick then does not depend on the validation images; null = the "
        "explained_variance rule")
    input: InputConfig = Field(default_factory=InputConfig)
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)


class ModelsConfig(_Strict):
    unet: UNetConfig = Field(default_factory=UNetConfig)
    ra: RAConfig = Field(default_factory=RAConfig)
    ae: AEConfig = Field(default_factory=AEConfig)
    pca: PCAConfig = Field(default_factory=PCAConfig)

    @model_validator(mode="after")
    def _encoder_saliency_needs_embeddings(self) -> ModelsConfig:
        for name in ("unet", "ae", "pca"):
            if getattr(self, name).anomaly.saliency == "encoder":
                raise ValueError(
                    f"{name}.anomaly.saliency: 'encoder' uses RA's multi-scale encoder embeddings "
                    f"and is for model.ra only; use saliency: none (or lpips) for {name}")
        return self


# ----------------------------------------------------------------------------------- training
class TrainingConfig(_Strict):
    epochs_per_stage: int = Field(5, ge=1)
    min_images_per_stage: int = Field(
        0, ge=0, description="a stage trains epochs_per_stage epochs, and more until its epochs "
        "have drawn at least this many training images (repeats counted): a small cohort gets "
        "as many steps as a large one (0 = off)")
    min_images_per_run: int = Field(
        0, ge=0, description="the run's epochs draw at least this many training images in all "
        "(repeats counted): the last stage trains more epochs until they have, so an archive of "
        "one small stage gets the steps of a larger one; a run that draws them anyway is "
        "unchanged (0 = off)")
    batch_size: int = Field(32, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="autocast: auto = bf16 on GPUs with native bf16 (compute capability "
        ">= 8.0), fp16 + GradScaler on older GPUs, fp32 on the CPU; bf16/fp16 force that dtype "
        "(also on the CPU); off = fp32")
    channels_last: bool = True
    compile: bool = False
    cudnn_benchmark: bool = Field(True, description="CUDA: cuDNN times and picks the fastest "
                                  "convolution algorithms (fixed input sizes; not bit-reproducible)")
    tf32: bool = Field(True, description="CUDA: TF32 tensor cores for the fp32 matmuls/convolutions")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torchrun process group: auto = nccl on CUDA, gloo on the CPU; gloo "
        "also runs several ranks on one GPU, which NCCL refuses")
    grad_clip: float | None = Field(1.0, gt=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    early_stopping_patience: int | None = Field(None, ge=1, description="epochs without val gain")
    replay: Literal["none", "all"] | float = Field(
        "none", description="after the first epoch of stage K, each epoch also revisits the "
        "cached training images of stages 1..K-1: all of them, or this share (0-1] of each; "
        "needs data.cache: persistent")

    @field_validator("replay")
    @classmethod
    def _replay_share(cls, v: str | float) -> str | float:
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError(f"a share must be in (0, 1] (or none / all), got {v}")
        return v
    checkpoint_every_steps: int = Field(200, ge=1)
    checkpoint_every_minutes: float = Field(10.0, gt=0)
    log_every_steps: int = Field(10, ge=1)
    live_plot_every_s: float = Field(30.0, gt=0)
    memory_check_every_steps: int = Field(50, ge=1)
    val_max_images: int | None = Field(None, ge=1, description="cap on val images per epoch")


class LoggingConfig(_Strict):
    logger: Literal["jsonl", "tensorboard", "wandb"] = "jsonl"
    wandb_project: str = "imgae-dx"
    wandb_entity: str | None = None
    progress: bool = True


class EvaluationConfig(_Strict):
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples (patients) for 95% CIs")
    top_percent_localisation: float = Field(1.0, gt=0, le=100)
    examples: int = Field(6, ge=0, description="most/least anomalous test images in the report")
    max_images: int | None = Field(None, ge=1)


class Config(_Strict):
    seed: int = 42
    source: str = Field("kaggle:nih-chest-xrays/data",
                        description="kaggle:OWNER/SLUG, kaggle-competition:SLUG, URL, .zip, folder")
    stages: str | list[str] = Field("all", description="'all' or a list of stages: images_NNN "
                                    "(nih), part_NNN (other datasets)")
    models: list[Literal["unet", "ra", "ae", "pca"]] = Field(default_factory=lambda: ["unet", "ra", "pca"])
    out: str = "runs/latest"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelsConfig = Field(default_factory=ModelsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: str | list[str]) -> str | list[str]:
        import re

        items = v.split(",") if isinstance(v, str) and v != "all" else ([] if v == "all" else v)
        for s in items:
            if not re.fullmatch(r"(images|part)_\d{3}", s.strip()):
                raise ValueError(f"stage {s!r} is not 'all' or a name like images_001 or part_001")
        return v if v == "all" else [s.strip() for s in items]

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one model is needed (unet, ra, ae, pca)")
        return list(dict.fromkeys(v))

    def to_yaml(self) -> str:
        """The resolved configuration as YAML (contains no secrets: none are ever stored here)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ------------------------------------------------------------------------------------ loading
def _configs_root() -> Path:
    return Path(str(resources.files("imgae_dx") / "configs"))


def packaged_config_path(*parts: str) -> Path:
    """Path of a YAML file shipped inside the package, e.g. ``("cloud_configs", "colab.yaml")``."""
    return _configs_root().joinpath(*parts)


def read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``{}`` when empty); ConfigError naming the file when
    it cannot be read, is not YAML, or holds no mapping at the top."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    return _parse_yaml(text, f"config file {path}")


def _parse_yaml(text: str, origin: str) -> dict[str, Any]:
    """The mapping in YAML ``text``; ``origin`` names it in errors (``config file PATH``)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} must hold a mapping at the top, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` updated by ``extra``, nested mappings merged (neither is changed); a
    validated section in ``extra`` (a pydantic model) counts as its dict."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, BaseModel):
            out[k] = v.model_dump()
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def nest_dotted(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"training.batch_size": 8}`` → ``{"training": {"batch_size": 8}}`` (a user config file's shape)."""
    nested: dict[str, Any] = {}
    for k, v in flat.items():
        _set_dotted(nested, k, v)
    return nested


def format_validation_error(err: ValidationError, origin: str = "config",
                            loc_prefix: tuple[str, ...] = ()) -> str:
    """One line per problem: ``key: got VALUE — what is allowed``.

    ``loc_prefix`` places a section validated on its own in the whole config (``("model",
    "unet")``): keys are named, and allowed keys looked up, from the top of :class:`Config`.
    """
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = (*loc_prefix, *e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if e["type"] == "extra_forbidden":
            parent = _parent_fields(loc[:-1])
            allowed = f"; allowed keys here: {', '.join(parent)}" if parent else ""
            lines.append(f"  {key}: unknown key{allowed}")
        else:
            lines.append(f"  {key}: got {e.get('input')!r} — {e['msg']}")
    return "\n".join(lines)


def _parent_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Config
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}).keys())


def default_dict() -> dict[str, Any]:
    """Packaged defaults: streaming_config.yaml plus model_configs/{unet,ra,ae}.yaml."""
    base = read_yaml(packaged_config_path("streaming_config.yaml"))
    for name in MODEL_NAMES:
        p = packaged_config_path("model_configs", f"{name}.yaml")
        if p.exists():
            base = deep_merge(base, {"model": {name: read_yaml(p)}})
    return base


def with_earlier_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved run configuration with every key it predates set as its version behaved.

    A run's ``config.yaml`` written before a key existed (:data:`imgae_dx.run.identity.ADDED_KEYS`)
    gets that key's "as before" value, not today's default: the run is evaluated, resumed and
    scored with the preprocessing it was trained with, and keeps its fingerprint.
    """
    from imgae_dx.run.identity import ADDED_KEYS

    out = copy.deepcopy(dict(data))
    for dotted, value in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf not in node:
            node[leaf] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile: str | None = None,
    *,
    saved_run: bool = False,
) -> Config:
    """Build the validated config.

    Args:
        path: user YAML file (same shape as ``configs/streaming_config.yaml``), optional.
        overrides: dotted keys → values (command-line flags), applied last; ``None`` values skipped.
        profile: ``"local"`` or ``"colab"`` to merge ``configs/cloud_configs/PROFILE.yaml``.
        saved_run: ``path`` is a run folder's own ``config.yaml`` (``train --resume``): keys it
            predates take their earlier values (:func:`with_earlier_defaults`).
    """
    data = default_dict()
    origin = "packaged defaults"
    if profile:
        p = packaged_config_path("cloud_configs", f"{profile}.yaml")
        if not p.exists():
            raise ConfigError(f"unknown cloud profile {profile!r}; allowed: local, colab")
        data = deep_merge(data, read_yaml(p))
    if path is not None:
        given_file = read_yaml(Path(path))
        data = deep_merge(data, with_earlier_defaults(given_file) if saved_run else given_file)
        origin = str(path)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for k, v in given.items():
        _set_dotted(data, k, v)
    if given:
        origin += " + command-line flags"
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None


def config_from_yaml_text(text: str, origin: str = "run config") -> Config:
    """Re-read a resolved ``config.yaml`` (as written to a run folder; keys it predates take
    their earlier values, :func:`with_earlier_defaults`)."""
    data = with_earlier_defaults(_parse_yaml(text, origin))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
