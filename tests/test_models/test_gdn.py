"""GDN / IGDN (ecc_mmdet.models.compressors.gdn) and the compressors' ``gdn=True`` option."""
import pytest
import torch
import torch.nn.functional as F

import ecc_mmdet  # noqa: F401
from ecc_mmdet.models.compressors import ChannelContextHyperpriorNeck, HyperpriorBottleneckNeck
from ecc_mmdet.models.compressors import GDN

from conftest import fit_neck, top_half_features


def _set(gdn, beta, gamma):
    with torch.no_grad():
        gdn.beta.copy_(beta.sqrt())
        gdn.gamma.copy_(gamma.sqrt())


def test_gdn_divides_by_the_weighted_energy_and_igdn_multiplies():
    g, ig = GDN(3), GDN(3, inverse=True)
    beta = torch.tensor([1.0, 0.5, 2.0])
    gamma = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.3, 0.1], [0.4, 0.0, 0.2]])
    _set(g, beta, gamma)
    _set(ig, beta, gamma)
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    norm = beta.view(1, 3, 1, 1) + torch.einsum('ij,njhw->nihw', gamma, x * x)
    torch.testing.assert_close(g(x), x / norm.sqrt(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ig(x), x * norm.sqrt(), rtol=1e-4, atol=1e-6)
    # the default init is a mild normalisation: 1 / sqrt(1 + 0.1 x^2)
    torch.testing.assert_close(GDN(3)(x), x / (1 + 0.1 * x * x).sqrt(), rtol=1e-4, atol=1e-6)


def test_gdn_parameters_stay_non_negative_and_beta_bounded_below():
    g = GDN(2, beta_min=1e-2)
    with torch.no_grad():
        g.beta.fill_(-3.0)   # raw values an optimiser could reach
        g.gamma.fill_(-3.0)
    x = torch.full((1, 2, 1, 1), 5.0)
    y = g(x)  # gamma -> 0, beta -> beta_min: y = x / sqrt(beta_min)
    torch.testing.assert_close(y, x / 0.1, rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match='channels must be a positive int'):
        GDN(0)


@pytest.mark.parametrize('kind', [HyperpriorBottleneckNeck, ChannelContextHyperpriorNeck])
def test_a_gdn_codec_trains_and_round_trips_bit_exactly(kind):
    kw = dict(num_slices=2, context_channels=8) if kind is ChannelContextHyperpriorNeck else {}
    torch.manual_seed(0)
    neck = kind(8, latent_channels=6, hyper_channels=4, hyper_downsample=2, beta=0.002,
                rate_unit='bits_per_element', gdn=True, **kw)
    assert sum(isinstance(m, GDN) and not m.inverse for m in neck.g_a) == 2
    assert sum(isinstance(m, GDN) and m.inverse for m in neck.g_s) == 2
    assert not any(isinstance(m, GDN) for m in neck.h_a)  # the hyper-analysis keeps act_cfg
    x = top_half_features(1, 3, 24, 20)
    neck = fit_neck(neck, x, steps=300, lr=2e-2)
    assert any((m.gamma.detach()**2 - 0.1 * torch.eye(6)).abs().max() > 1e-3
               for m in neck.g_a if isinstance(m, GDN))  # the normalisation itself learned
    items = neck.compress(x)
    with torch.no_grad():
        x_hat, _ = neck(x)
    batch = torch.cat([neck.decompress(*it) for it in items])
    assert torch.equal(batch, x_hat)
    assert [neck.compress(x[i:i + 1])[0] for i in range(3)] == items
    assert F.mse_loss(batch, x) < 0.5 * x.pow(2).mean()
