"""The Reversed Autoencoder's objective: Soft-IntroVAE with the reversed-embedding loss
(Bercea et al. 2023), alternating an encoder update and a decoder update with two optimisers
(``"encoder"``, ``"decoder"``); the formulas are in :class:`RAObjective`'s docstring."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgae_dx.config import RAConfig
from imgae_dx.models.losses import embedding_loss, exp_elbo, kl_divergence, reconstruction_error
from imgae_dx.models.noise import standard_normal
from imgae_dx.models.objective import LossPart, Objective, StepContext, scalar_floats
from imgae_dx.models.ra.torch_model import ReversedAutoencoder, reparameterize


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
        super().__init__(model, {"encoder": self.enc_params, "decoder": self.dec_params}, cfg.optim)
        self.cfg = cfg
        self.ra = model

    def compile(self, **kwargs: Any) -> None:
        self.ra.encoder.compile(**kwargs)
        self.ra.decoder.compile(**kwargs)

    def _encode_sample(self, t: Tensor, g: torch.Generator | None
                       ) -> tuple[Tensor, Tensor, list[Tensor], Tensor]:
        """Encode t (B×1×H×W) and draw z ~ q(z|t): (μ, log σ² as float32 B×zdim, embeddings, z)."""
        mu, logvar, emb = self.ra.encoder(t)
        mu, logvar = mu.float(), logvar.float()
        return mu, logvar, emb, reparameterize(mu, logvar, standard_normal(mu.shape, g, mu.device))

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
        noise = standard_normal((x.shape[0], self.ra.zdim), ctx.generator, x.device)
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
