"""Shapes, embeddings, configuration errors and the predict() contract of every model."""

from __future__ import annotations

import pytest
import torch
from model_helpers import TINY

from imgae_dx.config import ConfigError, load_config
from imgae_dx.models import Prediction, create_model, create_objective


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
@pytest.mark.parametrize("size", [64, 128, 256])
def test_predict_shapes(name, size):
    torch.manual_seed(0)
    m = create_model(name, size, **TINY[name])
    x = torch.rand(2, 1, size, size)
    for mode in ("train", "eval"):
        getattr(m, mode)()
        p = m.predict(x)
        assert type(p) is Prediction
        assert p.reconstruction.shape == (2, 1, size, size)
        assert p.anomaly_map.shape == (2, 1, size, size)
        assert p.score.shape == (2,)
        assert p.reconstruction.dtype == p.anomaly_map.dtype == p.score.dtype == torch.float32
        assert m.training == (mode == "train")  # predict does not switch modes
        assert not p.reconstruction.requires_grad


@pytest.mark.parametrize("name", ["unet", "ra", "ae"])
def test_default_widths_forward(name):
    torch.manual_seed(0)
    m = create_model(name, 64)
    with torch.no_grad():
        y = m(torch.rand(1, 1, 64, 64))
    assert y.shape == (1, 1, 64, 64)
    assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0  # sigmoid outputs


def test_default_architecture_matches_config():
    cfg = load_config()
    u = create_model("unet", 128, cfg=cfg.model.unet)
    assert u.widths == [64, 128, 256, 512, 1024]
    assert sum(isinstance(mod, torch.nn.GroupNorm) for mod in u.modules()) == 2 * (5 + 4)
    assert sum(isinstance(mod, torch.nn.ConvTranspose2d) for mod in u.modules()) == 4
    ra = create_model("ra", 128, cfg=cfg.model.ra)
    assert ra.encoder.fc.out_features == 2 * 128
    assert ra.decoder.fc[0].in_features == 128 and ra.decoder.fc[0].out_features == 512 * 4 * 4
    ae = create_model("ae", 128)
    assert ae.to_latent.out_features == 16


@pytest.mark.parametrize("size", [64, 128, 256])
def test_ra_five_embedding_scales(size):
    torch.manual_seed(0)
    ch = [4, 8, 8, 16, 16]
    m = create_model("ra", size, channels=ch, zdim=8)
    mu, logvar, emb = m.encode(torch.rand(3, 1, size, size))
    assert mu.shape == logvar.shape == (3, 8)
    assert len(emb) == 5
    for i, e in enumerate(emb):
        assert e.shape == (3, ch[i], size // 2 ** (i + 1), size // 2 ** (i + 1))


def test_ra_default_embeddings_at_128():
    m = create_model("ra", 128)
    _, _, emb = m.encode(torch.rand(1, 1, 128, 128))
    assert [tuple(e.shape[1:]) for e in emb] == [
        (64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]


def test_ra_inference_mu_is_deterministic_and_sampling_differs():
    torch.manual_seed(0)
    m = create_model("ra", 64, **TINY["ra"]).eval()
    x = torch.rand(2, 1, 64, 64)
    a, b = m.predict(x), m.predict(x)
    assert torch.equal(a.reconstruction, b.reconstruction)
    mu, _, _ = m.encode(x)
    assert torch.allclose(a.reconstruction, m.decode(mu), atol=0)
    ms = create_model("ra", 64, **TINY["ra"], inference_samples=4).eval()
    ms.load_state_dict(m.state_dict())
    s = ms.reconstruct(x)
    assert s.shape == x.shape and not torch.equal(s, a.reconstruction)
    # sampled z, yet each image's reconstruction depends on that image only: same in any batch
    # (float kernels may differ in the last bits with the batch size, the noise may not)
    assert torch.allclose(ms.reconstruct(x[1:]), s[1:], atol=1e-6)
    assert torch.allclose(ms.reconstruct(torch.cat([x[1:], x[:1]])), torch.cat([s[1:], s[:1]]), atol=1e-6)
    assert not torch.allclose(ms.reconstruct(x[:1] * 0.9), s[:1], atol=1e-4)


def test_unet_without_skips_has_narrower_up_blocks():
    a = create_model("unet", 64, **TINY["unet"])
    b = create_model("unet", 64, **TINY["unet"], skip_connections=False)
    assert sum(p.numel() for p in b.parameters()) < sum(p.numel() for p in a.parameters())
    assert b(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_configuration_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown model 'vae'"):
        create_model("vae", 64)
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_model("ra", 48)
    with pytest.raises(ConfigError, match=r"model\.unet\.bogus") as bad:
        create_model("unet", 64, bogus=1)
    assert "allowed keys here: anomaly, base_channels, conv, depth" in str(bad.value)  # the U-Net's own keys
    with pytest.raises(ConfigError, match=r"model\.ra\.anomaly\.mapp: unknown key; allowed keys here: .*map"):
        create_model("ra", 64, anomaly={"mapp": "l1"})
    with pytest.raises(ConfigError, match="groups"):
        create_model("unet", 64, base_channels=6, groups=4)
    with pytest.raises(ConfigError, match=r"needs a ReversedAutoencoder"):
        create_objective("ra", create_model("ae", 64, **TINY["ae"]))
    m = create_model("ae", 64, **TINY["ae"])
    with pytest.raises(ValueError, match="B×1×H×W"):
        m.predict(torch.rand(2, 3, 64, 64))


def test_channels_last_and_bf16_autocast_cpu():
    torch.manual_seed(0)
    for name in ("unet", "ra", "ae"):
        m = create_model(name, 64, **TINY[name]).eval().to(memory_format=torch.channels_last)
        x = torch.rand(2, 1, 64, 64).to(memory_format=torch.channels_last)
        with torch.no_grad():
            ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            p = m.predict(x)
        assert p.reconstruction.dtype == torch.float32
        assert torch.isfinite(p.anomaly_map).all()
        assert (p.reconstruction - ref).abs().mean() < 0.02, name
