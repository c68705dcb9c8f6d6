"""CEMA's upload budget (``EntropySelector`` in band mode, :class:`UploadBudget`): the upload
ratio stays within 5 points of the band's width on a stream whose entropy drifts and changes
regime, where the warm-up quantiles moved by the mean drift (``budget=False``) miss it."""
import pytest
import torch

from ecc_mmdet.adaptation import EntropySelector
from ecc_mmdet.errors import ConfigError

BAND, TARGET = (0.5, 0.8), 0.3


def drifting_stream(seed: int, n: int = 600):
    """Three seeded segments of normalised entropies: a slow drift down (adaptation), a regime
    change to a confident, narrow distribution (fog, contrast), a wide drift down."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, n, dtype=torch.float64)

    def noise():
        return torch.randn(n, generator=g, dtype=torch.float64)

    segments = (0.70 - 0.04 * t + 0.08 * noise(), 0.66 - 0.02 * t + 0.02 * noise(),
                0.60 - 0.25 * t + 0.10 * noise())
    return [s.clamp(0, 1) for s in segments]


def upload_ratios(selector, segments, batch_size=8):
    """Per segment: the share of its images the selector uploads (batches in stream order)."""
    out = []
    for seg in segments:
        ups = [selector.select(seg[i:i + batch_size], range(i, i + len(seg[i:i + batch_size])))
               for i in range(0, len(seg), batch_size)]
        out.append(float(torch.cat(ups).double().mean()))
    return out


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_the_budget_controller_holds_its_ratio_on_a_drifting_stream(seed):
    segments = drifting_stream(seed)
    held = upload_ratios(EntropySelector(band=BAND, warmup=32), segments)
    assert all(abs(r - TARGET) <= 0.05 for r in held), held
    assert abs(sum(held) / len(held) - TARGET) <= 0.05
    # without the controller the same stream misses the budget (seed 0: fog overshoots it)
    free = upload_ratios(EntropySelector(band=BAND, warmup=32, budget=False), segments)
    assert max(abs(r - TARGET) for r in free) > 0.1, free
    if seed == 0:
        assert free[1] > TARGET + 0.15


def test_the_budget_decides_one_image_at_a_time():
    """Batching does not change a decision; reset() starts the stream again; the state logs the
    running ratio against its target."""
    stream = torch.cat(drifting_stream(5, n=100))
    s = EntropySelector(band=BAND, budget=dict(window=16, gain=2.0))
    one = torch.cat([s.select(stream[i:i + 1], [i]) for i in range(len(stream))])
    s.reset()
    assert s.state()['upload_ratio'] == 0
    batched = torch.cat([s.select(stream[i:i + 7], range(i, i + 7))
                         for i in range(0, len(stream), 7)])
    assert torch.equal(one, batched)
    state = s.state()
    assert state['upload_ratio'] == pytest.approx(float(one.double().mean()))
    assert state['target_ratio'] == pytest.approx(TARGET)
    assert 0 <= state['e_min'] < state['e_max'] <= 1


@pytest.mark.parametrize('kw, msg', [
    (dict(budget=dict(window=64)), 'give band'),  # absolute bounds: no target ratio
    (dict(band=BAND, dynamic=False), 'dynamic=True and lam=1'),
    (dict(band=BAND, lam=0.9), 'dynamic=True and lam=1'),
    (dict(band=BAND, budget=dict(window=1)), 'window >= 2'),
    (dict(band=BAND, budget=dict(gain=0)), 'gain > 0'),
    (dict(band=BAND, budget=dict(ratio=0.2)), 'dict\\(window=..., gain=...\\)'),
])
def test_bad_budget_configs_are_refused(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        EntropySelector(**kw)


def test_absolute_bounds_and_budget_false_keep_the_rule_without_a_budget():
    assert EntropySelector().budget is None  # absolute bounds: no target ratio
    assert EntropySelector(band=BAND, budget=False).budget is None
    assert EntropySelector(band=BAND).budget is not None  # on by default in band mode
