"""The PCA baseline: fit, k chosen on validation normals only, reconstruction and scores, state."""

from __future__ import annotations

import pytest
import torch

from imgae_dx.config import ConfigError
from imgae_dx.models import create_model, create_objective, fit_principal_components


def _low_rank(n, seed, d=32 * 32, rank=3, noise=0.0005):
    """Images mean + Σ_j a_ij·b_j (rank 3) + small noise, as N×D in [0, 1]."""
    g = torch.Generator().manual_seed(0)  # the same basis for every call
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0].T  # rank×D orthonormal
    g = torch.Generator().manual_seed(seed)
    coef = torch.randn(n, rank, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    return (0.5 + 0.05 * coef @ basis + noise * torch.randn(n, d, generator=g)).clamp(0, 1)


def test_fit_finds_the_span_and_chooses_k_on_validation():
    m = create_model("pca", 32, max_components=16, explained_variance=0.95)
    facts = fit_principal_components(m, _low_rank(200, 1), _low_rank(50, 2))
    assert facts["k"] == 3 and facts["explained"] >= 0.95 and facts["components"] == 16
    normal = _low_rank(4, 3).view(4, 1, 32, 32)
    odd = normal.clone()
    odd[:, :, 8:16, 8:16] += 0.3  # a "lesion" outside the normal span
    p_n, p_o = m.predict(normal), m.predict(odd)
    assert p_n.reconstruction.shape == normal.shape
    assert float((p_n.reconstruction - normal).abs().max()) < 0.02
    assert (p_o.score > 3 * p_n.score).all()
    # k depends on the validation images only: stricter share → more components, same training data
    m2 = create_model("pca", 32, max_components=16, explained_variance=0.999)
    assert fit_principal_components(m2, _low_rank(200, 1), _low_rank(50, 2))["k"] > 3


def test_state_round_trip_and_unfitted_model():
    m = create_model("pca", 32, max_components=8)
    fit_principal_components(m, _low_rank(40, 1), _low_rank(10, 2))
    m2 = create_model("pca", 32, max_components=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        m2(torch.rand(1, 1, 32, 32))
    m2.load_state_dict(m.state_dict())
    x = _low_rank(3, 5).view(3, 1, 32, 32)
    assert torch.equal(m2.predict(x).score, m.predict(x).score)
    with pytest.raises(ValueError, match="training images must be"):
        fit_principal_components(m, torch.rand(5, 10), torch.rand(2, 10))
    with pytest.raises(ConfigError, match="no training objective"):
        create_objective("pca", m)


def test_a_fixed_k_ignores_the_validation_share():
    m = create_model("pca", 32, max_components=16, components=2)
    facts = fit_principal_components(m, _low_rank(200, 1), _low_rank(50, 2))
    assert facts["k"] == 2 and facts["explained"] < 0.95  # not the rule's 3
    few = create_model("pca", 32, max_components=4, components=10)
    assert fit_principal_components(few, _low_rank(20, 1), _low_rank(5, 2))["k"] == 4  # at most those fitted
