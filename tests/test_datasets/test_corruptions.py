"""CorruptImage (COCO-C corruptions through imagecorruptions): seeded, severity-monotone, leaves
the caller's random state alone, clear errors; the robustness benchmark end to end."""
import json

import numpy as np
import pytest

import ecc_mmdet  # noqa: F401
from ecc_mmdet.datasets.transforms import CORRUPTIONS, CorruptImage, add_corruption

from conftest import run_tool


def _image(seed=0, size=64):
    """A smooth BGR image with edges (blurs and noise both have something to change)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([(x * 3) % 256, (y * 2) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
    img[size // 4:size // 2, size // 4:size // 2] = rng.randint(0, 256, 3)
    return img


def _apply(corruption, severity, seed=0, path='a.png', img=None):
    img = _image() if img is None else img
    out = CorruptImage(corruption, severity, seed)(dict(img=img.copy(), img_path=path))
    return out['img']


def test_every_corruption_runs_and_keeps_the_geometry():
    img = _image()
    for name in CORRUPTIONS:
        if name == 'glass_blur':
            continue  # numba-compiled on first use: seconds; covered by the benchmark tool
        out = _apply(name, 2, img=img)
        assert out.shape == img.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, img), name


def test_seeded_per_image_and_caller_state_untouched():
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = _apply('gaussian_noise', 3, seed=0, path='a.png')
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(a, _apply('gaussian_noise', 3, seed=0, path='a.png'))
    assert not np.array_equal(a, _apply('gaussian_noise', 3, seed=1, path='a.png'))
    assert not np.array_equal(a, _apply('gaussian_noise', 3, seed=0, path='b.png'))


@pytest.mark.parametrize('name,stat', [
    ('gaussian_noise', 'diff'), ('impulse_noise', 'diff'), ('motion_blur', 'diff'),
    ('contrast', 'std'), ('defocus_blur', 'diff'), ('brightness', 'diff')])
def test_severity_is_monotone(name, stat):
    img = _image()
    vals = []
    for s in range(1, 6):
        out = _apply(name, s, img=img).astype(np.float64)
        vals.append(np.abs(out - img).mean() if stat == 'diff' else -out.std())
    assert all(a < b for a, b in zip(vals, vals[1:])), (name, vals)


def test_severity_zero_is_the_clean_image():
    img = _image()
    assert np.array_equal(_apply('fog', 0, img=img), img)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown corruption 'haze'.*gaussian_noise"):
        CorruptImage('haze')
    with pytest.raises(ValueError, match='severity must be an int in 0..5'):
        CorruptImage('fog', 6)
    with pytest.raises(ValueError, match='severity must be an int in 0..5'):
        CorruptImage('fog', 2.5)
    pipe = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(64, 64)),
            dict(type='PackDetInputs')]
    steps = add_corruption(pipe, 'fog', 3, seed=7)
    assert steps[1] == dict(type='CorruptImage', corruption='fog', severity=3, seed=7)
    assert len(pipe) == 3  # the input is not modified
    with pytest.raises(ValueError, match='already corrupts'):
        add_corruption(steps, 'fog', 3)
    with pytest.raises(ValueError, match='no LoadImageFromFile'):
        add_corruption(pipe[1:], 'fog', 3)


def test_robustness_benchmark_end_to_end(served_model, tmp_path):
    out = tmp_path / 'rob.json'
    run_tool('benchmark_robustness', served_model['config'], served_model['checkpoint'],
             '--data-root', served_model['data_root'], '--corruptions', 'gaussian_noise', 'fog',
             '--severities', '1', '5', '--out', out)
    res = json.loads(out.read_text())
    cells = [v for row in res['mAP'].values() for v in row.values()]
    assert len(cells) == 4
    s = res['summary']
    assert s['mPC'] == pytest.approx(sum(cells) / 4)
    if s['clean_mAP']:
        assert s['rPC'] == pytest.approx(s['mPC'] / s['clean_mAP'])
    # a split model runs its deployment path: real bytes per corruption and severity
    assert set(res['bytes']) == {'gaussian_noise', 'fog'}
    assert all(b > 0 for row in res['bytes'].values() for b in row.values())
    assert (tmp_path / 'rob.txt').read_text().strip().splitlines()[-1].startswith('clean mAP')
    assert (tmp_path / 'rob.png').stat().st_size > 0
    bad = run_tool('benchmark_robustness', served_model['config'], served_model['checkpoint'],
                   '--corruptions', 'haze', check=False)
    assert bad.returncode != 0 and "unknown corruption(s) ['haze']" in bad.stderr
