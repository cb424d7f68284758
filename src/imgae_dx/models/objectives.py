"""Training objectives: the losses of each model, one interface for all (no per-model branches).

An :class:`Objective` owns the model's optimiser(s) and says what to minimise: :meth:`Objective.losses`
yields one :class:`LossPart` per optimiser update of a training step (U-Net and AE: one; RA: the
encoder's, then — computed with the updated encoder — the decoder's). It never calls ``backward``,
never steps an optimiser and never touches a GradScaler: :class:`imgae_dx.training.step.TrainStep`
is the one place that does (autocast, scale, backward, gradient sync, unscale, clip, step, scaler
update, LR schedule). A :class:`StepContext` carries the autocast factory and the noise generator.

* :class:`UNetObjective` — denoising: ``x̃ = x + up(N(0, noise_std) at noise_resolution²)``
  (bilinear upsampling to H×W), target the clean x, per-pixel MSE.
* :class:`AEObjective` — plain per-pixel MSE.
* :class:`RAObjective` — Soft-IntroVAE with the reversed-embedding loss (Bercea et al. 2023),
  alternating an encoder update and a decoder update with two Adam optimisers.

``"loss"`` is the headline term, for every model the per-pixel MSE between the clean input and its
reconstruction (U-Net: of the noisy input), so figures are comparable across models. ``val_loss``
returns Python floats (one device sync per call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgae_dx.config import AEConfig, OptimConfig, RAConfig, UNetConfig
from imgae_dx.errors import CheckpointError
from imgae_dx.models.reversed_ae import ReversedAutoencoder, randn_like_gen, reparameterize


@dataclass
class StepContext:
    """What an objective needs from the step owner.

    Attributes:
        autocast: zero-argument factory of the autocast context (``nullcontext`` for fp32).
        generator: RNG for the objective's noise (corruption, reparameterisation, fakes);
            None uses the global RNG. A seeded generator makes runs reproducible.
    """

    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    generator: torch.Generator | None = None


@dataclass
class LossPart:
    """One optimiser update of a training step, as an objective hands it to the step owner.

    Attributes:
        optimizer: key in :attr:`Objective.optimizers` of the optimiser to step.
        loss: scalar float32 tensor to minimise (with its graph).
        params: the parameters that optimiser updates (clipped together; synced under DDP).
        only_these: differentiate into ``params`` only (``backward(inputs=params)``): other
            parameters the loss depends on get no gradient from it.
        terms: named scalar tensors to report (``"loss"``, the headline, in the first part).
    """

    optimizer: str
    loss: Tensor
    params: list[nn.Parameter]
    only_these: bool = False
    terms: dict[str, Tensor] = field(default_factory=dict)


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW from an :class:`OptimConfig` (fused kernels when every parameter is on CUDA)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
               amsgrad=cfg.amsgrad, fused=fused or None)


# ------------------------------------------------------------------------------ loss functions
def reconstruction_error(x: Tensor, y: Tensor) -> Tensor:
    """Squared error summed over pixels: x, y B×C×H×W → B (float32)."""
    return (x.float() - y.float()).square().flatten(1).sum(dim=1)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) per sample: μ, log σ² B×zdim → B (float32)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1.0 + logvar - logvar.exp() - mu.square()).sum(dim=1)


def embedding_loss(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Reversed-embedding loss: Σ over scales of 0.5·MSE(a_i, b_i) + mean_B(1 − cos(a_i, b_i)).

    a_i, b_i: B×C_i×H_i×W_i (cosine over each sample's flattened map) → scalar (float32).
    """
    if len(a) != len(b):
        raise ValueError(f"embedding lists differ in length: {len(a)} vs {len(b)}")
    total = torch.zeros((), device=a[0].device, dtype=torch.float32)
    for ea, eb in zip(a, b, strict=True):
        ea, eb = ea.float(), eb.float()
        total = total + 0.5 * F.mse_loss(ea, eb)
        total = total + (1.0 - F.cosine_similarity(ea.flatten(1), eb.flatten(1), dim=1)).mean()
    return total


def exp_elbo(rec_err: Tensor, kl: Tensor, scale: float, beta_rec: float, beta_neg: float) -> Tensor:
    """Soft-IntroVAE's expELBO: mean_B exp(−2·scale·(β_rec·rec + β_neg·KL)); rec, KL: B → scalar."""
    return torch.exp(-2.0 * scale * (beta_rec * rec_err + beta_neg * kl)).mean()


def coarse_noise(
    x: Tensor, std: float, resolution: int, generator: torch.Generator | None = None,
    *, roll: bool = False,
) -> Tensor:
    """N(0, std²) noise drawn at resolution×resolution, bilinearly upsampled to x's H×W.

    x: B×C×H×W → noise B×C×H×W float32 (``align_corners=False``). With ``roll`` the upsampled
    noise is shifted by one random (dy, dx) for the batch, wrapping around (as Kascenas et al.
    do), drawn from ``generator`` after the noise.
    """
    b, c, h, w = x.shape
    shape = torch.empty((b, c, resolution, resolution), device=x.device)
    n = randn_like_gen(shape, generator) * std
    if (resolution, resolution) != (h, w):
        n = F.interpolate(n, size=(h, w), mode="bilinear", align_corners=False)
    if roll:
        dev = generator.device if generator is not None else "cpu"
        dy = int(torch.randint(0, h, (1,), generator=generator, device=dev))
        dx = int(torch.randint(0, w, (1,), generator=generator, device=dev))
        n = torch.roll(n, shifts=(dy, dx), dims=(-2, -1))
    return n


@contextmanager
def frozen_bn_statistics(*modules: nn.Module) -> Iterator[None]:
    """Forward passes inside do not move the running statistics of ``modules``' BatchNorm layers.

    Train-mode BatchNorm still normalises with the batch's own statistics (the loss is unchanged);
    only the running averages used in eval mode are left as they were (momentum 0 for the duration,
    restored afterwards).
    """
    bns = [m for mod in modules for m in mod.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom


# ---------------------------------------------------------------------------------- objectives
class Objective:
    """Base: owns ``optimizers``; subclasses implement ``losses`` and ``val_loss``."""

    name: str = "objective"

    def __init__(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.model = model
        self.optimizers = optimizers

    # -- interface ------------------------------------------------------------------------------
    def losses(self, x: Tensor, ctx: StepContext) -> Iterator[LossPart]:
        """The updates of one training step on x (B×1×H×W in [0, 1]; the objective normalises it
        with the model's :meth:`~imgae_dx.models.base.ReconstructionModel.prepare` first), in order.

        A generator: the step owner applies each part (backward, optimiser step) before asking
        for the next, so a later part is computed with the parameters the earlier one updated.
        """
        raise NotImplementedError

    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        """Validation losses on x (B×1×H×W), no gradients; ``"loss"`` is comparable per model."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Optimisers' state (the model's weights are saved by the trainer)."""
        return {"objective": self.name,
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises :class:`CheckpointError` on a mismatch."""
        if not isinstance(sd, dict) or "optimizers" not in sd:
            raise CheckpointError(f"{self.name}: objective state lacks 'optimizers'; "
                                  "the checkpoint is not from ImgAE-Dx or is corrupt")
        if sd.get("objective") != self.name:
            raise CheckpointError(f"objective state is for {sd.get('objective')!r}, "
                                  f"not {self.name!r}: load the checkpoint of the same model")
        opt = sd["optimizers"]
        if set(opt) != set(self.optimizers):
            raise CheckpointError(f"{self.name}: optimisers {sorted(opt)} in the checkpoint, "
                                  f"expected {sorted(self.optimizers)}")
        for k, o in self.optimizers.items():
            o.load_state_dict(opt[k])

    def compile(self, **kwargs: Any) -> None:
        """``torch.compile`` (in place) the modules the step calls; kwargs go to ``compile``."""
        self.model.compile(**kwargs)


def scalar_floats(d: dict[str, Tensor | None]) -> dict[str, float]:
    """Tensors → floats with a single device sync."""
    keys = [k for k, v in d.items() if v is not None]
    vals = torch.stack([d[k].detach().float().reshape(()) for k in keys]).tolist()  # type: ignore[union-attr]
    return dict(zip(keys, vals, strict=True))


class _MSEObjective(Objective):
    """Shared by U-Net (denoising) and AE: per-pixel MSE to the clean input, one optimiser."""

    def __init__(self, model: nn.Module, optim: OptimConfig) -> None:
        super().__init__(model, {"model": build_optimizer(model.parameters(), optim)})
        self.params = [p for p in model.parameters() if p.requires_grad]

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Model input for training; identity here (U-Net adds coarse noise)."""
        return x

    def losses(self, x: Tensor, ctx: StepContext) -> Iterator[LossPart]:
        x = self.model.prepare(x)
        xin = self.corrupt(x, ctx.generator)
        with ctx.autocast():
            y = self.model(xin)
        loss = F.mse_loss(y.float(), x.float())
        yield LossPart("model", loss, self.params, terms={"loss": loss})

    @torch.no_grad()
    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        x = self.model.prepare(x)
        with ctx.autocast():
            y = self.model(x)
        return scalar_floats({"loss": F.mse_loss(y.float(), x.float())})


class AEObjective(_MSEObjective):
    """Plain AE: loss = mean over pixels of (AE(x) − x)²."""

    name = "ae"

    def __init__(self, model: nn.Module, cfg: AEConfig) -> None:
        super().__init__(model, cfg.optim)
        self.cfg = cfg


class UNetObjective(_MSEObjective):
    """Denoising U-Net: loss = mean((UNet(x + coarse_noise) − x)²).

    ``val_loss`` reports ``loss`` (the same denoising loss with noise from a fixed-seed RNG, so
    epochs compare) and ``mse_clean`` (reconstruction of the uncorrupted input).
    """

    name = "unet"
    VAL_NOISE_SEED = 0

    def __init__(self, model: nn.Module, cfg: UNetConfig) -> None:
        super().__init__(model, cfg.optim)
        self.cfg = cfg

    def corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """x + N(0, noise_std) drawn at noise_resolution², upsampled (rolled with ``noise_roll``,
        only where x > ``noise_foreground_threshold`` when set); x itself if noise_std = 0."""
        c = self.cfg
        if c.noise_std <= 0:
            return x
        n = coarse_noise(x, c.noise_std, c.noise_resolution, generator, roll=c.noise_roll)
        return self.model.add_noise(x, n)

    @torch.no_grad()
    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        x = self.model.prepare(x)
        g = torch.Generator(device=x.device).manual_seed(self.VAL_NOISE_SEED)
        xin = self.corrupt(x, g)
        with ctx.autocast():
            y_noisy = self.model(xin)
            y_clean = self.model(x) if self.cfg.noise_std > 0 else y_noisy
        return scalar_floats({"loss": F.mse_loss(y_noisy.float(), x.float()),
                        "mse_clean": F.mse_loss(y_clean.float(), x.float())})


@dataclass
class _EncoderStepOut:
    """What the decoder step reuses from the encoder step."""

    z: Tensor                    # B×zdim, reparameterised latent of x (pre-update encoder)
    fake: Tensor                 # B×1×H×W, dec(z_fake), graph through the decoder kept
    terms: dict[str, Tensor] = field(default_factory=dict)


class RAObjective(Objective):
    """Soft-IntroVAE + reversed-embedding loss with alternating E/D updates (Bercea et al. 2023).

    Per batch x (B×1×H×W), scale = 1/(H·W), rec(a, b) = Σ_pixels (a − b)² (per image), KL per
    image summed over zdim; "mean" below = batch mean. Noise is drawn from ``ctx.generator`` in
    this order: z_fake ~ N(0, I), ε (real), ε (rec), ε (fake) [encoder step], ε (rec), ε (fake)
    [decoder step] — all B×zdim.

    Encoder step (only encoder parameters change)::

        fake = D(z_fake);  μ, logσ², e(x) = E(x);  z = μ + σ·ε;  x̂ = D(z)
        μ_r, logσ²_r, e(x̂) = E(x̂.detach());  x̂_r = D(μ_r + σ_r·ε)
        μ_f, logσ²_f = E(fake.detach());     x̂_f = D(μ_f + σ_f·ε)
        L_E = scale·(β_rec·mean rec(x, x̂) + β_kl·mean KL(μ, logσ²))
              + w_exp·(expELBO(rec(x̂, x̂_r), KL_r) + expELBO(rec(fake, x̂_f), KL_f))
              + w_emb·Σ_scales [0.5·MSE(e(x), e(x̂)) + mean(1 − cos(e(x), e(x̂)))]
        expELBO(r, k) = mean exp(−2·scale·(β_rec·r + β_neg·k))

    (As in the authors' code, the target x̂ of rec(x̂, x̂_r) is not detached, so the encoder also
    receives that gradient through x̂ = D(E(x)); the re-encoded inputs are detached. The single
    encoder pass on x̂.detach() serves both the embeddings and the expELBO, where the authors'
    code runs that identical pass twice.)

    Decoder step (only decoder parameters change), with the updated encoder::

        x̂ = D(z.detach());  μ_r, logσ²_r = E(x̂);  μ_f, logσ²_f = E(fake)
        x̂_r = D((μ_r + σ_r·ε).detach());  x̂_f = D((μ_f + σ_f·ε).detach())
        L_D = scale·(β_rec·mean rec(x, x̂) + 0.5·β_kl·(mean KL_r + mean KL_f)
                     + γ_r·0.5·β_rec·(mean rec(x̂.detach(), x̂_r) + mean rec(fake.detach(), x̂_f)))

    (γ_r = 0: the last term and the two decoder passes x̂_r, x̂_f are skipped; the paper's
    γ_r = 1e-8 makes that term's gradient negligible, so this trains to the same weights.)

    ``fake`` is computed once and reused by the decoder step (the decoder has not changed in
    between, so it equals the authors' second evaluation).

    BatchNorm's running statistics (used in eval mode: validation, scoring) are updated only by
    the passes over real data, E(x) and D(z) in the encoder step; the passes over fakes and
    reconstructions normalise with their batch statistics but leave the running averages alone
    (:attr:`bn_stats_from_real`; the losses are unaffected).
    """

    name = "ra"
    bn_stats_from_real: bool = True

    def __init__(self, model: ReversedAutoencoder, cfg: RAConfig) -> None:
        self.enc_params = list(model.encoder.parameters())
        self.dec_params = list(model.decoder.parameters())
        super().__init__(model, {"encoder": build_optimizer(self.enc_params, cfg.optim),
                                 "decoder": build_optimizer(self.dec_params, cfg.optim)})
        self.cfg = cfg
        self.ra = model

    def compile(self, **kwargs: Any) -> None:
        self.ra.encoder.compile(**kwargs)
        self.ra.decoder.compile(**kwargs)

    def _noise(self, like: Tensor, g: torch.Generator | None) -> Tensor:
        return randn_like_gen(like, g)

    def _encode_sample(self, t: Tensor, g: torch.Generator | None
                       ) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """Encode t (B×1×H×W) and draw z ~ q(z|t): (μ, log σ² as float32 B×zdim, embeddings, z)."""
        mu, logvar, emb = self.ra.encoder(t)
        mu, logvar = mu.float(), logvar.float()
        return mu, logvar, emb, reparameterize(mu, logvar, self._noise(mu, g))

    def _aux_passes(self) -> AbstractContextManager[None]:
        """Context of the passes over reconstructions, re-reconstructions and fakes.

        With :attr:`bn_stats_from_real` (the default) they leave BatchNorm's running statistics
        alone, so the statistics eval mode uses come from real images only (the encoder on x, the
        decoder on z ~ q(z|x)); the training loss is the same either way. Otherwise (the authors'
        code) the running averages also follow fakes and re-encoded reconstructions, which early
        in training look nothing like x: eval-mode reconstructions then drift from train-mode
        ones (seen at 64 px: validation MSE 0.0147 in eval mode vs 0.0094 with batch statistics).
        """
        if self.bn_stats_from_real:
            return frozen_bn_statistics(self.ra.encoder, self.ra.decoder)
        return nullcontext()

    # -- the two steps --------------------------------------------------------------------------
    def encoder_loss(self, x: Tensor, noise: Tensor, ctx: StepContext) -> _EncoderStepOut:
        """Forward passes and L_E (see class docstring); no backward. x: B×1×H×W."""
        c = self.cfg
        dec = self.ra.decoder
        scale = 1.0 / (x.shape[-2] * x.shape[-1])
        g = ctx.generator
        aux = self._aux_passes
        with ctx.autocast():
            with aux():
                fake = dec(noise)
            mu, logvar, emb_real, z = self._encode_sample(x, g)
            rec = dec(z)
            with aux():
                mu_r, logvar_r, emb_rec, z_r = self._encode_sample(rec.detach(), g)
                rec_rec = dec(z_r)
                mu_f, logvar_f, _, z_f = self._encode_sample(fake.detach(), g)
                rec_fake = dec(z_f)
        rec_err = reconstruction_error(x, rec).mean()
        kl_real = kl_divergence(mu, logvar).mean()
        kl_rec = kl_divergence(mu_r, logvar_r)
        kl_fake = kl_divergence(mu_f, logvar_f)
        exp_rec = exp_elbo(reconstruction_error(rec, rec_rec), kl_rec, scale, c.beta_rec, c.beta_neg)
        exp_fake = exp_elbo(reconstruction_error(fake.detach(), rec_fake), kl_fake, scale,
                            c.beta_rec, c.beta_neg)
        emb = embedding_loss(emb_real, emb_rec)
        loss_real = scale * (c.beta_rec * rec_err + c.beta_kl * kl_real)
        loss_e = loss_real + c.exp_elbo_weight * (exp_rec + exp_fake) + c.embedding_weight * emb
        terms = {"loss_encoder": loss_e, "rec": rec_err, "mse": scale * rec_err,
                 "kl_real": kl_real, "exp_elbo_rec": exp_rec, "exp_elbo_fake": exp_fake,
                 "emb": emb}
        return _EncoderStepOut(z=z, fake=fake, terms=terms)

    def decoder_loss(self, x: Tensor, e: _EncoderStepOut, ctx: StepContext) -> dict[str, Tensor]:
        """Forward passes and L_D (see class docstring); no backward."""
        c = self.cfg
        dec = self.ra.decoder
        scale = 1.0 / (x.shape[-2] * x.shape[-1])
        g = ctx.generator
        with ctx.autocast(), self._aux_passes():
            fake = e.fake
            rec = dec(e.z.detach())
            mu_r, logvar_r, _, z_r = self._encode_sample(rec, g)
            mu_f, logvar_f, _, z_f = self._encode_sample(fake, g)
            if c.gamma_r > 0:  # γ_r = 0: the two terms vanish, and their decoder passes are skipped
                rec_rec = dec(z_r.detach())
                rec_fake = dec(z_f.detach())
        rec_err = reconstruction_error(x, rec).mean()
        kl_rec = kl_divergence(mu_r, logvar_r).mean()
        kl_fake = kl_divergence(mu_f, logvar_f).mean()
        loss_d = scale * (c.beta_rec * rec_err + 0.5 * c.beta_kl * (kl_rec + kl_fake))
        out = {"rec_decoder": rec_err, "kl_rec": kl_rec, "kl_fake": kl_fake}
        if c.gamma_r > 0:
            rr = reconstruction_error(rec.detach(), rec_rec).mean()
            rf = reconstruction_error(fake.detach(), rec_fake).mean()
            loss_d = loss_d + scale * c.gamma_r * 0.5 * c.beta_rec * (rr + rf)
            out.update(rec_rec=rr, rec_fake=rf)
        return {"loss_decoder": loss_d, **out}

    def losses(self, x: Tensor, ctx: StepContext) -> Iterator[LossPart]:
        """L_E (encoder update), then L_D with the updated encoder (decoder update)."""
        x = self.ra.prepare(x)
        noise = self._noise(torch.empty((x.shape[0], self.ra.zdim), device=x.device), ctx.generator)
        e = self.encoder_loss(x, noise, ctx)
        yield LossPart("encoder", e.terms["loss_encoder"], self.enc_params, only_these=True,
                       terms={"loss": e.terms["mse"], **e.terms})
        d = self.decoder_loss(x, e, ctx)
        yield LossPart("decoder", d["loss_decoder"], self.dec_params, only_these=True, terms=d)

    @torch.no_grad()
    def val_loss(self, x: Tensor, ctx: StepContext) -> dict[str, float]:
        """``loss``: per-pixel MSE of the z = μ reconstruction; ``kl``: mean KL of x."""
        x = self.ra.prepare(x)
        with ctx.autocast():
            mu, logvar, _ = self.ra.encoder(x)
            y = self.ra.decoder(mu)
        return scalar_floats({"loss": F.mse_loss(y.float(), x.float()),
                        "kl": kl_divergence(mu, logvar).mean()})
