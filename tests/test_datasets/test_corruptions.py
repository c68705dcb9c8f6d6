"""CorruptImage (COCO-C corruptions through imagecorruptions): seeded, severity-monotone, leaves
the caller's random state alone, clear errors; the robustness benchmark end to end."""
import json

import numpy as np
import pytest

import ecc_mmdet  # noqa: F401
from ecc_mmdet.datasets.transforms import CORRUPTIONS, CorruptImage, add_corruption

from conftest import own_predictions_root, run_tool


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
    assert 'glass_blur' in CORRUPTIONS
    for name in CORRUPTIONS:
        # glass_blur is slow per pixel (and numba-compiled on first use): a 32-px image
        test_img = img[:32, :32].copy() if name == 'glass_blur' else img
        out = _apply(name, 2, img=test_img)
        assert out.shape == test_img.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, test_img), name


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_every_corruption_is_seeded_per_image(name):
    """impulse_noise and glass_blur draw from generators np.random.seed does not reach
    (skimage's random_noise, numba's state): they get the per-image seed as an argument."""
    img = _image()[:32, :32].copy()  # small: glass_blur is slow per pixel
    a = _apply(name, 3, img=img)
    assert np.array_equal(a, _apply(name, 3, img=img))
    if name in ('impulse_noise', 'glass_blur', 'gaussian_noise'):
        assert not np.array_equal(a, _apply(name, 3, img=img, seed=1)), name


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
    # ground truth = the model's own clean predictions: clean mAP 100, corruptions lower it (the
    # untrained model's mAP on the real labels is 0, which would make mPC 0 and rPC 'n/a')
    root = own_predictions_root(served_model['config'], served_model['checkpoint'],
                                served_model['data_root'], tmp_path / 'own')
    run_tool('benchmark_robustness', served_model['config'], served_model['checkpoint'],
             '--data-root', root, '--corruptions', 'gaussian_noise', 'fog',
             '--severities', '1', '5', '--out', out)
    res = json.loads(out.read_text())
    cells = [v for row in res['mAP'].values() for v in row.values()]
    assert len(cells) == 4
    s = res['summary']
    assert s['clean_mAP'] == pytest.approx(100.0)
    assert all(0 <= c < 100 for c in cells) and s['mPC'] > 0
    assert s['mPC'] == pytest.approx(sum(cells) / 4)
    assert s['rPC'] == pytest.approx(s['mPC'] / 100.0)
    for c, row in res['mAP'].items():
        assert s['per_corruption_mean'][c] == pytest.approx((row['1'] + row['5']) / 2)
    # severity 5 noise leaves an untrained model little of its own clean detections (fog's
    # order between severities is not a property of an untrained model: it flipped once)
    noise = res['mAP']['gaussian_noise']
    assert noise['5'] <= noise['1'], noise
    # a split model runs its deployment path: real bytes per corruption and severity
    assert set(res['bytes']) == {'gaussian_noise', 'fog'}
    assert all(b > 0 for row in res['bytes'].values() for b in row.values())
    assert (tmp_path / 'rob.txt').read_text().strip().splitlines()[-1].startswith('clean mAP')
    assert (tmp_path / 'rob.png').stat().st_size > 0
    bad = run_tool('benchmark_robustness', served_model['config'], served_model['checkpoint'],
                   '--corruptions', 'haze', check=False)
    assert bad.returncode != 0 and "unknown corruption(s) ['haze']" in bad.stderr


def test_random_corruption_trains_only_on_corruptions_no_benchmark_evaluates():
    """The robust teacher's augmentation: its draws cover its corruptions and severities and
    never one the benchmarks evaluate (those are refused at construction), prob 0 is the
    identity, and its draws follow NumPy's global seed (the Runner's)."""
    from ecc_mmdet.datasets.transforms import RandomCorruption
    from ecc_mmdet.datasets.transforms.corruptions import (BENCHMARK_CORRUPTIONS,
                                                           EXTRA_CORRUPTIONS)
    aug = RandomCorruption(prob=0.75)
    np.random.seed(0)
    seen, changed = [], 0
    for i in range(40):
        img = _image(i % 3)
        out = aug(dict(img=img.copy(), img_path=f'{i}.png'))
        if 'corruption' in out:
            seen.append(out['corruption'])
            changed += not np.array_equal(out['img'], img)
        else:
            assert np.array_equal(out['img'], img)
    names, sevs = {c for c, _ in seen}, {s for _, s in seen}
    assert names == set(EXTRA_CORRUPTIONS) and sevs == {1, 2, 3, 4, 5}
    assert not names & set(BENCHMARK_CORRUPTIONS) and 20 < len(seen) < 40 and changed > 20
    np.random.seed(0)
    again = [aug(dict(img=_image(i % 3), img_path=f'{i}.png')).get('corruption')
             for i in range(40)]
    assert [c for c in again if c] == seen
    img = _image()
    assert np.array_equal(RandomCorruption(prob=0.0)(dict(img=img.copy()))['img'], img)
    for bad in (['fog'], ['speckle_noise', 'contrast']):
        with pytest.raises(ValueError, match='benchmarks evaluate'):
            RandomCorruption(corruptions=bad)
    with pytest.raises(ValueError, match='unknown'):
        RandomCorruption(corruptions=['rain'])
    with pytest.raises(ValueError, match='severities'):
        RandomCorruption(severities=(0, 6))


@pytest.mark.parametrize('name', ['faster_rcnn_r34_fpn_synthetic_robust.py',
                                  'faster_rcnn_r18_fpn_synthetic_robust_ft.py',
                                  'ecc_faster_rcnn_r18_synthetic_system_robust.py'])
def test_robust_teacher_config_augments_only_with_held_out_corruptions(name):
    """The robust teachers (a deeper, wider one from scratch; the demo's teacher fine-tuned) and
    the system distilled from one: their training images go through RandomCorruption with its default (held-out) corruptions,
    none of those the benchmarks evaluate; their test pipelines are clean."""
    from mmengine.config import Config
    from mmdet.registry import TRANSFORMS
    from conftest import REPO
    from ecc_mmdet.datasets.transforms.corruptions import BENCHMARK_CORRUPTIONS
    cfg = Config.fromfile(f'{REPO}/configs/{name}')
    train = cfg.train_dataloader.dataset.pipeline
    steps = [t['type'] for t in train]
    assert steps[:2] == ['LoadImageFromFile', 'RandomCorruption']
    aug = TRANSFORMS.build(train[1])
    from ecc_mmdet.datasets.transforms.corruptions import EXTRA_CORRUPTIONS
    assert aug.corruptions == EXTRA_CORRUPTIONS
    assert not set(aug.corruptions) & set(BENCHMARK_CORRUPTIONS)
    assert 'RandomCorruption' not in [t['type'] for t in cfg.test_dataloader.dataset.pipeline]
    if 'r34' in name:
        assert cfg.model.backbone.depth == 34 and cfg.model.neck.out_channels == 96
    elif 'system' in name:  # the demo's system, distilled from the robust fine-tune
        base = Config.fromfile(f'{REPO}/configs/ecc_faster_rcnn_r18_synthetic_system.py')
        assert cfg.model == base.model
        assert cfg.teacher_config.endswith('faster_rcnn_r18_fpn_synthetic_robust_ft.py')
    else:  # same architecture as the teacher it starts from
        base = Config.fromfile(f'{REPO}/configs/faster_rcnn_r18_fpn_synthetic.py')
        assert cfg.model == base.model and cfg.load_from.endswith('baseline/epoch_12.pth')
