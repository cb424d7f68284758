"""Every loss term against a hand computation (numpy, float64) on tiny fixed inputs, to 1e-5."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import TINY, make_step, step_with_snapshots

from imgae_dx.models import StepContext, create_model, create_objective
from imgae_dx.models.losses import embedding_loss, exp_elbo, kl_divergence, reconstruction_error

TOL = 1e-5


def close(got, want, tol=TOL):
    got = float(got.detach()) if isinstance(got, torch.Tensor) else float(got)
    want = float(want)
    assert abs(got - want) <= tol * max(1.0, abs(want)), (got, want)


# ------------------------------------------------------------------ numpy reference formulas
def np_rec(a, b):  # Σ_pixels (a − b)², per image
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return ((a - b) ** 2).reshape(a.shape[0], -1).sum(1)


def np_kl(mu, logvar):
    mu = np.asarray(mu, np.float64)
    lv = np.asarray(logvar, np.float64)
    return -0.5 * (1 + lv - np.exp(lv) - mu**2).sum(1)


def np_emb(a_list, b_list):
    total = 0.0
    for a, b in zip(a_list, b_list, strict=True):
        a = np.asarray(a, np.float64).reshape(a.shape[0], -1)
        b = np.asarray(b, np.float64).reshape(b.shape[0], -1)
        total += 0.5 * ((a - b) ** 2).mean()
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        total += (1 - cos).mean()
    return total


def np_exp_elbo(rec, kl, scale, beta_rec, beta_neg):
    return np.exp(-2 * scale * (beta_rec * np.asarray(rec) + beta_neg * np.asarray(kl))).mean()


def T(a):
    return a.detach().double().numpy()


# ------------------------------------------------------------------------ the loss functions
def test_reconstruction_error_by_hand():
    x = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]], [[[0.1, 0.2], [0.3, 0.4]]]])
    y = torch.tensor([[[[0.5, 0.5], [0.0, 0.0]]], [[[0.4, 0.2], [0.1, 0.0]]]])
    got = reconstruction_error(x, y)
    # image 0: .25 + 0 + 1 + .0625 = 1.3125; image 1: .09 + 0 + .04 + .16 = 0.29
    assert torch.allclose(got, torch.tensor([1.3125, 0.29]), atol=1e-6)


def test_kl_by_hand():
    mu = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.5, 0.0]])
    lv = torch.tensor([[0.0, 0.0, 0.0], [np.log(2.0), -1.0, 1.0]], dtype=torch.float32)
    got = kl_divergence(mu, lv)
    # row 0: -0.5·Σ(1 + 0 − 1 − μ²) = 0.5·(0 + 1 + 4) = 2.5
    close(got[0], 2.5)
    want1 = -0.5 * sum(1 + v - np.exp(v) - m * m for m, v in
                       [(0.5, np.log(2.0)), (0.5, -1.0), (0.0, 1.0)])
    close(got[1], want1)
    assert torch.allclose(got, torch.from_numpy(np_kl(mu, lv)).float(), atol=1e-6)


def test_embedding_loss_by_hand():
    a1 = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])          # 2×1×1×2
    b1 = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]])
    a2 = torch.tensor([[[[1.0]], [[1.0]]], [[[3.0]], [[4.0]]]])   # 2×2×1×1
    b2 = torch.tensor([[[[1.0]], [[-1.0]]], [[[3.0]], [[4.0]]]])
    # scale 1: MSE = (1 + 1 + 0 + 1)/4 = .75; cos = [0, 1] → mean(1 − cos) = .5 → .375 + .5
    # scale 2: MSE = (0 + 4 + 0 + 0)/4 = 1;   cos = [0, 1] → .5 → .5 + .5
    got = embedding_loss([a1, a2], [b1, b2])
    close(got, 0.375 + 0.5 + 0.5 + 0.5)
    close(got, np_emb([a1, a2], [b1, b2]))


def test_exp_elbo_by_hand():
    rec = torch.tensor([100.0, 300.0])
    kl = torch.tensor([2.0, 0.5])
    scale = 1 / 64
    got = exp_elbo(rec, kl, scale, 0.5, 128.0)
    want = (np.exp(-2 / 64 * (50 + 256)) + np.exp(-2 / 64 * (150 + 64))) / 2
    close(got, want)


# -------------------------------------------------------------------------- the objectives
def _x(b=2, s=32):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    base = 0.5 + 0.3 * torch.sin(6 * xx) * torch.cos(4 * yy)
    return torch.stack([base, base.flip(-1) * 0.8 + 0.1])[:b].unsqueeze(1).contiguous()


def test_unet_denoising_loss_by_hand():
    torch.manual_seed(0)
    m = create_model("unet", 32, **TINY["unet"], noise_resolution=4)
    ref = copy.deepcopy(m)
    obj = create_objective("unet", m)
    x = _x()
    out = make_step(obj, seed=3)(x)
    low = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(3)) * 0.2
    noisy = x + F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    y = ref(noisy)
    want = ((T(y) - T(x)) ** 2).mean()  # target: the clean image
    close(out["loss"], want)
    v = obj.val_loss(x, StepContext())
    assert set(v) == {"loss", "mse_clean"}


def test_ae_loss_by_hand():
    torch.manual_seed(0)
    m = create_model("ae", 32, channels=[4, 8], latent_dim=4)
    ref = copy.deepcopy(m)
    out = make_step(create_objective("ae", m))(_x())
    close(out["loss"], ((T(ref(_x())) - T(_x())) ** 2).mean())


@pytest.fixture()
def ra_setup():
    torch.manual_seed(0)
    m = create_model("ra", 32, channels=[2, 3, 3, 4, 4], zdim=4)
    return m, create_objective("ra", m), _x()


def test_ra_encoder_and_decoder_losses_by_hand(ra_setup):
    m, obj, x = ra_setup
    c = m.cfg
    b, scale = x.shape[0], 1 / (32 * 32)
    m0 = copy.deepcopy(m)
    out, (_, m1) = step_with_snapshots(obj, m, x, seed=11)

    g = torch.Generator().manual_seed(11)
    n = [torch.randn((b, 4), generator=g) for _ in range(6)]  # documented draw order

    def sample(mu, lv, eps):
        return mu + eps * torch.exp(0.5 * lv)

    with torch.no_grad():
        # ---- encoder step, pre-update weights
        fake = m0.decoder(n[0])
        mu, lv, emb_x = m0.encoder(x)
        rec = m0.decoder(sample(mu, lv, n[1]))
        mu_r, lv_r, emb_r = m0.encoder(rec)
        rec_rec = m0.decoder(sample(mu_r, lv_r, n[2]))
        mu_f, lv_f, _ = m0.encoder(fake)
        rec_fake = m0.decoder(sample(mu_f, lv_f, n[3]))
    rec_err = np_rec(T(x), T(rec)).mean()
    kl_real = np_kl(T(mu), T(lv)).mean()
    exp_r = np_exp_elbo(np_rec(T(rec), T(rec_rec)), np_kl(T(mu_r), T(lv_r)), scale, 0.5, 128.0)
    exp_f = np_exp_elbo(np_rec(T(fake), T(rec_fake)), np_kl(T(mu_f), T(lv_f)), scale, 0.5, 128.0)
    emb = np_emb([T(a) for a in emb_x], [T(a) for a in emb_r])
    loss_e = scale * (0.5 * rec_err + 1.0 * kl_real) + 0.25 * (exp_r + exp_f) + 0.005 * emb
    assert (c.beta_rec, c.beta_kl, c.beta_neg, c.exp_elbo_weight, c.embedding_weight) == (
        0.5, 1.0, 128.0, 0.25, 0.005)
    t = out
    close(t["rec"], rec_err)
    close(t["kl_real"], kl_real)
    close(t["exp_elbo_rec"], exp_r)
    close(t["exp_elbo_fake"], exp_f)
    close(t["emb"], emb)
    close(t["loss_encoder"], loss_e)
    assert 0 < exp_r < 1 and 0 < exp_f < 1 and emb > 0  # the terms are not trivially zero

    with torch.no_grad():
        # ---- decoder step, encoder already updated
        z = sample(mu, lv, n[1])
        fake1 = m1.decoder(n[0])
        rec1 = m1.decoder(z)
        mu_r1, lv_r1, _ = m1.encoder(rec1)
        mu_f1, lv_f1, _ = m1.encoder(fake1)
        rr = m1.decoder(sample(mu_r1, lv_r1, n[4]))
        rf = m1.decoder(sample(mu_f1, lv_f1, n[5]))
    rec_d = np_rec(T(x), T(rec1)).mean()
    kl_r, kl_f = np_kl(T(mu_r1), T(lv_r1)).mean(), np_kl(T(mu_f1), T(lv_f1)).mean()
    rr_e, rf_e = np_rec(T(rec1), T(rr)).mean(), np_rec(T(fake1), T(rf)).mean()
    loss_d = scale * (0.5 * rec_d + 0.5 * 1.0 * (kl_r + kl_f) + 1e-8 * 0.5 * 0.5 * (rr_e + rf_e))
    close(out["rec_decoder"], rec_d)
    close(out["kl_rec"], kl_r)
    close(out["kl_fake"], kl_f)
    close(out["rec_rec"], rr_e)
    close(out["rec_fake"], rf_e)
    close(out["loss_decoder"], loss_d)
    assert abs(kl_r - np_kl(T(mu_r), T(lv_r)).mean()) > 1e-7  # D step saw the updated encoder


def test_ra_val_loss_uses_mu(ra_setup):
    m, obj, x = ra_setup
    m.eval()
    v = obj.val_loss(x, StepContext())
    with torch.no_grad():
        mu, lv, _ = m.encoder(x)
        y = m.decoder(mu)
    close(v["loss"], ((T(y) - T(x)) ** 2).mean())
    close(v["kl"], np_kl(T(mu), T(lv)).mean())


def test_ra_gradients_match_the_reference_algorithm(ra_setup):
    """Gradients of both steps equal those of the authors' algorithm, written out step by step
    (requires_grad toggled per half, the re-encoding of x̂ run twice, fake recomputed)."""
    m, obj, x = ra_setup
    b, scale = x.shape[0], 1 / (32 * 32)
    m0 = copy.deepcopy(m)
    _, (_, m1) = step_with_snapshots(obj, m, x, seed=5)  # no clipping: raw gradients
    # each optimiser zeroes only its own half: after the step, the encoder still holds the
    # encoder update's gradients and the decoder the decoder update's
    g_enc = [p.grad.clone() for p in m.encoder.parameters()]
    g_dec = [p.grad.clone() for p in m.decoder.parameters()]

    g = torch.Generator().manual_seed(5)
    n = [torch.randn((b, 4), generator=g) for _ in range(6)]

    def sample(mu, lv, eps):
        return mu + eps * torch.exp(0.5 * lv)

    def rec_err(a, c):
        return ((a - c) ** 2).flatten(1).sum(1)

    def kl(mu, lv):
        return -0.5 * (1 + lv - lv.exp() - mu**2).sum(1)

    # encoder update of the reference
    for p in m0.decoder.parameters():
        p.requires_grad_(False)
    fake = m0.decoder(n[0])
    mu, lv, emb_x = m0.encoder(x)
    z = sample(mu, lv, n[1])
    rec = m0.decoder(z)
    _, _, emb_r = m0.encoder(rec.detach())
    l_emb = embedding_loss(emb_x, emb_r)
    mu_r, lv_r, _ = m0.encoder(rec.detach())
    rec_rec = m0.decoder(sample(mu_r, lv_r, n[2]))
    mu_f, lv_f, _ = m0.encoder(fake.detach())
    rec_fake = m0.decoder(sample(mu_f, lv_f, n[3]))
    exp_r = torch.exp(-2 * scale * (0.5 * rec_err(rec, rec_rec) + 128 * kl(mu_r, lv_r))).mean()
    exp_f = torch.exp(-2 * scale * (0.5 * rec_err(fake, rec_fake) + 128 * kl(mu_f, lv_f))).mean()
    loss_e = (scale * (0.5 * rec_err(x, rec).mean() + kl(mu, lv).mean())
              + 0.25 * (exp_r + exp_f) + 0.005 * l_emb)
    ref_enc = torch.autograd.grad(loss_e, list(m0.encoder.parameters()))
    for a, r in zip(g_enc, ref_enc, strict=True):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-7)

    # decoder update of the reference (encoder already updated)
    for p in m1.encoder.parameters():
        p.requires_grad_(False)
    fake = m1.decoder(n[0])
    rec = m1.decoder(z.detach())
    mu_r, lv_r, _ = m1.encoder(rec)
    z_r = sample(mu_r, lv_r, n[4])
    mu_f, lv_f, _ = m1.encoder(fake)
    z_f = sample(mu_f, lv_f, n[5])
    rec_rec = m1.decoder(z_r.detach())
    rec_fake = m1.decoder(z_f.detach())
    loss_d = scale * (0.5 * rec_err(x, rec).mean() + 0.5 * (kl(mu_r, lv_r).mean() + kl(mu_f, lv_f).mean())
                      + 1e-8 * 0.5 * 0.5 * (rec_err(rec.detach(), rec_rec).mean()
                                            + rec_err(fake.detach(), rec_fake).mean()))
    ref_dec = torch.autograd.grad(loss_d, list(m1.decoder.parameters()))
    for a, r in zip(g_dec, ref_dec, strict=True):
        assert torch.allclose(a, r, rtol=1e-4, atol=1e-7)
