"""FactorizedEntropyModel: quantisation, rate estimate vs real bytes, tables and checkpoints."""
import io

import pytest
import torch

from ecc_edge.codecs.bitstream import (CodecId, CorruptedBitstreamError, ImageMeta, Payload,
                                        pack, unpack)
from ecc_mmdet.entropy_models import FactorizedEntropyModel

C = 8
SIGMAS = torch.linspace(0.3, 4.0, C).view(1, C, 1, 1)


def _gaussian(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, h, w, generator=g) * SIGMAS + torch.linspace(-2, 2, C).view(1, C, 1, 1)


def _fit(model, steps=200, seed=0):
    """A few hundred Adam steps of the rate loss on per-channel Gaussians.

    Single-threaded: these ops are tiny and thread contention on a 2-core box costs ~6x.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_steps(model, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_steps(model, steps, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for i in range(steps):
        y = _gaussian(2, 16, 16, seed=1000 + i)
        _, lik = model(y)
        loss = model.bits(lik).mean() / y[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    return _fit(FactorizedEntropyModel(C)).eval()


def _state_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_forward_train_and_eval_quantisation():
    torch.manual_seed(0)
    m = FactorizedEntropyModel(C)
    y = _gaussian(2, 5, 7, seed=1)
    y_noisy, lik = m(y)
    assert y_noisy.shape == lik.shape == y.shape
    assert (y_noisy - y).abs().max() <= 0.5 and not torch.equal(y_noisy, y)
    assert ((lik > 0) & (lik <= 1)).all() and lik.min() >= 1e-9

    m.eval()
    y_hat, lik = m(y)
    med = m.quantiles[:, 0, 1].detach().view(1, C, 1, 1)
    assert torch.equal(y_hat, torch.round(y - med) + med)
    assert torch.allclose(m.bits(lik), -torch.log2(lik).flatten(1).sum(1))
    assert m.bits(lik).shape == (2, )


def test_ste_quantisation_passes_gradients():
    m = FactorizedEntropyModel(C, quantization='ste')
    y = _gaussian(1, 4, 4, seed=2).requires_grad_()
    y_hat, lik = m(y)
    med = m.quantiles[:, 0, 1].detach().view(1, C, 1, 1)
    assert torch.equal(y_hat.detach(), torch.round(y.detach() - med) + med)
    y_hat.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))
    with pytest.raises(ValueError):
        FactorizedEntropyModel(C, quantization='round')


def test_quantiles_are_derived_by_bisection_not_learned(trained):
    """Quantiles are a buffer found in update(): logits hit -t, 0, +t at the three points."""
    m = FactorizedEntropyModel(C)
    assert 'quantiles' not in dict(m.named_parameters())
    _, lik = m(_gaussian(1, 4, 4, seed=3))
    m.bits(lik).sum().backward()
    assert m.matrices[0].grad is not None
    logits = trained._logits_cumulative(trained.quantiles, stop_gradient=True)
    torch.testing.assert_close(logits, trained.target.view(1, 1, 3).expand_as(logits),
                               atol=1e-3, rtol=0)
    # medians of the fitted per-channel Gaussians (means linspace(-2, 2)) within ~0.5
    torch.testing.assert_close(trained.quantiles[:, 0, 1], torch.linspace(-2, 2, C), atol=0.5,
                               rtol=0)


def test_compress_without_tables_raises():
    m = FactorizedEntropyModel(C)
    with pytest.raises(RuntimeError, match='update'):
        m.compress(_gaussian(1, 4, 4, seed=4))
    m.update()
    with torch.no_grad():
        m.biases[0].add_(0.1)  # parameters changed -> tables stale
    with pytest.raises(RuntimeError, match='stale'):
        m.compress(_gaussian(1, 4, 4, seed=4))


def test_eval_updates_tables_only_when_parameters_changed():
    m = FactorizedEntropyModel(C)
    assert m._pmf_table.numel() == 0
    m.eval()
    assert m.tables_ready()
    assert m.update() is False  # current
    table = m._pmf_table.clone()
    m.train()
    m.eval()
    assert torch.equal(m._pmf_table, table)
    m.train()
    with torch.no_grad():
        m.matrices[0].sub_(1.0)  # flatter density -> wider tails -> longer tables
    m.eval()
    assert m.tables_ready() and m._pmf_table.shape[1] > table.shape[1]


def test_tables_are_valid_integer_pmfs(trained):
    table, lengths = trained._pmf_table, trained._pmf_length
    for c in range(C):
        row = table[c, :lengths[c] + 1]
        assert row.sum() == 2**16 and row.min() >= 1
        assert (table[c, lengths[c] + 1:] == 0).all()
    # deterministic: recomputing gives the identical tables
    saved = [t.clone() for t in (trained._pmf_table, trained._offset, trained._pmf_length)]
    trained.update(force=True)
    for a, b in zip(saved, (trained._pmf_table, trained._offset, trained._pmf_length)):
        assert torch.equal(a, b)


def test_decompress_equals_eval_forward_exactly(trained):
    y = _gaussian(3, 9, 11, seed=5)
    y[0, 0, 0, 0] = 1e4  # far outside the tables: escape-coded
    y[1, 3, 2, 2] = -3e4  # within the coders' symbol bound (2**15)
    y_hat, _ = trained(y)
    bodies = trained.compress(y)
    assert len(bodies) == 3 and all(isinstance(b, bytes) for b in bodies)
    out = trained.decompress(bodies, (9, 11))
    assert out.dtype == y_hat.dtype and torch.equal(out, y_hat)
    assert trained.decompress([], (9, 11)).shape == (0, C, 9, 11)
    with pytest.raises(CorruptedBitstreamError):
        trained.decompress([bodies[0][:-4]], (9, 11))
    with pytest.raises(ValueError):
        trained.compress(torch.full((1, C, 2, 2), float('nan')))
    with pytest.raises(ValueError, match='bound'):  # no trained latent is this large
        trained.compress(torch.full((1, C, 2, 2), 3e5))


def test_real_bits_match_estimate(trained):
    y = _gaussian(2, 32, 32, seed=6)
    _, lik = trained(y)
    est = trained.bits(lik)
    real = torch.tensor([len(b) * 8.0 for b in trained.compress(y)])
    ratio = (real / est).tolist()
    print('real/estimated bits:', ratio)
    assert all(0.99 < r < 1.03 for r in ratio), ratio


def test_state_dict_round_trip_into_fresh_model(trained):
    y = _gaussian(2, 8, 8, seed=7)
    bodies = trained.compress(y)
    state = _state_bytes(trained)
    assert {'_pmf_table', '_pmf_length', '_offset', '_tables_fingerprint'} <= set(state)

    fresh = FactorizedEntropyModel(C)  # never updated: empty table buffers
    assert fresh._pmf_table.shape == (0, 0)
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh._pmf_table, trained._pmf_table)
    assert fresh.compress(y) == bodies
    assert torch.equal(fresh.decompress(bodies, (8, 8)), trained.decompress(bodies, (8, 8)))


def test_state_dict_loads_into_model_with_other_table_size(trained):
    y = _gaussian(2, 8, 8, seed=8)
    bodies = trained.compress(y)
    other = FactorizedEntropyModel(C, init_scale=3.0).eval()  # narrower tables
    assert other._pmf_table.shape != trained._pmf_table.shape
    other.load_state_dict(_state_bytes(trained))
    assert other._pmf_table.shape == trained._pmf_table.shape
    assert not other.update()  # loaded tables are current for the loaded parameters
    assert other.compress(y) == bodies
    assert torch.equal(other.decompress(bodies, (8, 8)), trained(y)[0])


def test_checkpoint_without_tables_loads_and_recomputes(trained):
    state = {k: v for k, v in _state_bytes(trained).items() if not k.startswith('_')}
    m = FactorizedEntropyModel(C).eval()
    m.load_state_dict(state)  # strict: tables are derived data, not required
    assert m._pmf_table.numel() == 0
    m.eval()
    assert torch.equal(m._pmf_table, trained._pmf_table)
    y = _gaussian(1, 8, 8, seed=9)
    assert m.compress(y) == trained.compress(y)


def test_nested_module_and_payload_round_trip(trained):
    """Prefix handling inside a parent module, and the body inside a framed payload."""
    parent = torch.nn.Sequential(torch.nn.Identity(), FactorizedEntropyModel(C, init_scale=2.0))
    parent.load_state_dict(torch.nn.Sequential(torch.nn.Identity(), trained).state_dict())
    em = parent[1].eval()
    y = _gaussian(1, 6, 10, seed=10)
    meta = ImageMeta(ori_shape=(48, 80), img_shape=(48, 80))
    data = pack(Payload(CodecId.ENTROPY_BOTTLENECK, (C, 6, 10), meta, b'', em.compress(y)[0]))
    p = unpack(data, expected_codec=CodecId.ENTROPY_BOTTLENECK)
    assert torch.equal(em.decompress([p.body], p.latent_shape[1:]), trained(y)[0])


def test_tables_outside_buffers_follow_every_weight_change(trained):
    """mmengine's EMA copies buffers in place between a model and its averaged copy and moves
    weights through ``.data``: the tables (whose size changes) are state-dict entries but not
    buffers, and a change through ``.data`` (no version bump) still makes them stale."""
    m = FactorizedEntropyModel(C)
    m.load_state_dict(trained.state_dict())
    assert m.tables_ready() and not {n for n, _ in m.named_buffers()} & set(m.TABLE_KEYS)
    m.double()  # moves take the tables along; integers stay integers
    assert m._pmf_table.dtype == torch.int32 and m.quantiles.dtype == torch.float64
    m.float()
    moved = FactorizedEntropyModel(C)
    moved.load_state_dict(m.state_dict())
    assert moved.to('meta')._pmf_table.is_meta  # devices too
    partial = torch.nn.Sequential(torch.nn.Linear(1, 1), m)
    partial.load_state_dict({'0.weight': torch.ones(1, 1), '0.bias': torch.ones(1)},
                            strict=False)  # without this model's entries: left as it was
    assert m.tables_ready()
    m.biases[0].data.add_(0.1)
    assert not m.tables_ready()
    m.eval()
    assert m.tables_ready()
