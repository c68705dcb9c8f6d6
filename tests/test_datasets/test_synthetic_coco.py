"""Tests of the deterministic synthetic COCO-format dataset generator."""
import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from ecc_mmdet.datasets import (SYNTHETIC_CLASSES, ensure_synthetic_coco,
                                generate_synthetic_coco, render_synthetic_image)
from ecc_mmdet.datasets import synthetic_coco as sc
from ecc_mmdet.datasets.synthetic import MIN_BOX_SIZE, MIN_VISIBLE_FRACTION
from ecc_mmdet.datasets.synthetic.spec import normalize_args

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_train=8, num_val=4, image_size=64, progress=False)


def _gen(out, **kw):
    args = dict(SMALL)
    args.update(kw)
    return generate_synthetic_coco(out, **args)


def _load(path):
    with open(path, 'rb') as f:
        return json.loads(f.read())


def _pixels(summary, split):
    coco = _load(summary['ann_files'][split])
    img_dir = Path(summary['img_dirs'][split])
    return [cv2.imread(str(img_dir / im['file_name']), cv2.IMREAD_UNCHANGED)
            for im in coco['images']]


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    return _gen(tmp_path_factory.mktemp('synth') / 'ds', seed=0)


def test_deterministic_by_seed(tmp_path, small_set):
    again = _gen(tmp_path / 'again', seed=0)
    other = _gen(tmp_path / 'other', seed=1)
    for split in ('train', 'val'):
        a = Path(small_set['ann_files'][split]).read_bytes()
        b = Path(again['ann_files'][split]).read_bytes()
        assert a == b
        pa, pb, po = _pixels(small_set, split), _pixels(again, split), _pixels(other, split)
        assert len(pa) == len(pb) == len(po) > 0
        for x, y in zip(pa, pb):
            assert x.dtype == np.uint8 and np.array_equal(x, y)
        # another seed gives other images (every one of them)
        assert all(not np.array_equal(x, z) for x, z in zip(pa, po))
    assert (Path(small_set['ann_files']['train']).read_bytes() !=
            Path(other['ann_files']['train']).read_bytes())


def test_images_independent_of_count(tmp_path, small_set):
    fewer = _gen(tmp_path / 'fewer', seed=0, num_train=3, num_val=1)
    for split, n in (('train', 3), ('val', 1)):
        for x, y in zip(_pixels(fewer, split), _pixels(small_set, split)[:n]):
            assert np.array_equal(x, y)
        full = _load(small_set['ann_files'][split])
        part = _load(fewer['ann_files'][split])
        keep = [a for a in full['annotations'] if a['image_id'] <= n]
        assert [a['bbox'] for a in part['annotations']] == [a['bbox'] for a in keep]


def test_pycocotools_loads_expected_counts(small_set):
    for split, n_img in (('train', 8), ('val', 4)):
        coco = COCO(small_set['ann_files'][split])
        assert len(coco.getCatIds()) == len(SYNTHETIC_CLASSES)
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SYNTHETIC_CLASSES)
        assert sorted(coco.getCatIds()) == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        assert len(coco.getImgIds()) == n_img == small_set['num_images'][split]
        n_ann = len(coco.getAnnIds())
        assert n_ann == small_set['num_annotations'][split] > 0
        assert sum(len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()) == n_ann
        assert sum(len(coco.getAnnIds(catIds=[c])) for c in coco.getCatIds()) == n_ann
        anns = coco.loadAnns(coco.getAnnIds())
        assert len({a['id'] for a in anns}) == n_ann
        assert all(a['iscrowd'] == 0 for a in anns)


def test_boxes_inside_images_and_files_match(small_set):
    for split in ('train', 'val'):
        coco = _load(small_set['ann_files'][split])
        img_dir = Path(small_set['img_dirs'][split])
        images = {im['id']: im for im in coco['images']}
        for im in coco['images']:
            path = img_dir / im['file_name']
            assert path.is_file()
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert arr.shape == (im['height'], im['width'], 3) == (64, 64, 3)
        for a in coco['annotations']:
            im = images[a['image_id']]
            x, y, w, h = a['bbox']
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= im['width'] and y + h <= im['height']
            assert min(w, h) >= MIN_BOX_SIZE
            assert 0 < a['area'] <= w * h


def test_area_is_visible_pixel_count_and_matches_files(small_set):
    coco = _load(small_set['ann_files']['train'])
    img_dir = Path(small_set['img_dirs']['train'])
    for idx in range(3):
        image, anns, masks = render_synthetic_image(seed=0, split='train', index=idx,
                                                    image_size=64, return_masks=True)
        on_disk = cv2.imread(str(img_dir / f'{idx:06d}.png'), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(image, on_disk)  # png is lossless
        file_anns = [a for a in coco['annotations'] if a['image_id'] == idx + 1]
        assert len(file_anns) == len(anns) == len(masks)
        for fa, a, m in zip(file_anns, anns, masks):
            ys, xs = np.nonzero(m)
            assert fa['area'] == a['area'] == m.sum()
            assert fa['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                  ys.max() - ys.min() + 1]
            assert a['visible_fraction'] >= MIN_VISIBLE_FRACTION
            assert fa['category_id'] == SYNTHETIC_CLASSES.index(a['category']) + 1
        # visible masks of different instances never share a pixel
        for m1, m2 in itertools.combinations(masks, 2):
            assert not (m1 & m2).any()


def test_category_subset_and_image_size(tmp_path):
    cats = ['star', 'circle', 'cross']
    s = _gen(tmp_path / 'sub', seed=3, image_size=(48, 80), categories=cats, num_train=6,
             num_val=2, max_objects=4)
    assert s['categories'] == cats and s['image_size'] == (48, 80)
    for split in ('train', 'val'):
        coco = COCO(s['ann_files'][split])
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == cats
        assert {a['category_id'] for a in coco.loadAnns(coco.getAnnIds())} <= {1, 2, 3}
        for im in coco.loadImgs(coco.getImgIds()):
            assert (im['height'], im['width']) == (48, 80)
            arr = cv2.imread(os.path.join(s['img_dirs'][split], im['file_name']))
            assert arr.shape == (48, 80, 3)
        for a in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = a['bbox']
            assert x + w <= 80 and y + h <= 48
    with pytest.raises(ValueError, match='unknown synthetic category'):
        _gen(tmp_path / 'bad', categories=['hexagon'])


def test_jpg_format(tmp_path):
    s = _gen(tmp_path / 'jpg', image_format='jpg', num_train=2, num_val=1)
    coco = _load(s['ann_files']['train'])
    assert all(im['file_name'].endswith('.jpg') for im in coco['images'])
    assert cv2.imread(os.path.join(s['img_dirs']['train'], coco['images'][0]['file_name'])
                      ).shape == (64, 64, 3)


def test_ensure_reuses_and_regenerates(tmp_path):
    out = tmp_path / 'ens'
    first = ensure_synthetic_coco(out, **SMALL)
    assert first['generated']
    ann = Path(first['ann_files']['train'])
    img = Path(first['img_dirs']['train']) / '000000.png'
    meta = Path(first['meta_file'])
    # push the mtimes into the past so that any rewrite is visible
    for p in (ann, img, meta):
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    again = ensure_synthetic_coco(out, **SMALL)
    assert not again['generated']
    assert again['num_images'] == first['num_images']
    assert again['num_annotations'] == first['num_annotations']
    for p in (ann, img, meta):
        assert p.stat().st_mtime_ns == 1_000_000_000

    # different arguments -> regenerated
    changed = ensure_synthetic_coco(out, **dict(SMALL, seed=5))
    assert changed['generated'] and ann.stat().st_mtime_ns != 1_000_000_000
    assert json.loads(meta.read_text())['seed'] == 5

    # an interrupted run (annotations written, meta.json missing) is detected
    meta.unlink()
    assert ensure_synthetic_coco(out, **dict(SMALL, seed=5))['generated']
    # a missing image is detected
    (Path(first['img_dirs']['val']) / '000001.png').unlink()
    assert ensure_synthetic_coco(out, **dict(SMALL, seed=5))['generated']
    assert ensure_synthetic_coco(out, **dict(SMALL, seed=5))['generated'] is False
    # force regenerates anyway
    assert ensure_synthetic_coco(out, force=True, **dict(SMALL, seed=5))['generated']


def test_occlusion_and_multiple_scales(tmp_path):
    s = generate_synthetic_coco(tmp_path / 'big', num_train=40, num_val=0, image_size=128,
                                progress=False)
    coco = _load(s['ann_files']['train'])
    by_img = {}
    for a in coco['annotations']:
        by_img.setdefault(a['image_id'], []).append(a['bbox'])

    def overlap(b1, b2):
        return (min(b1[0] + b1[2], b2[0] + b2[2]) > max(b1[0], b2[0])
                and min(b1[1] + b1[3], b2[1] + b2[3]) > max(b1[1], b2[1]))

    n_overlaps = sum(
        overlap(b1, b2) for boxes in by_img.values()
        for b1, b2 in itertools.combinations(boxes, 2))
    assert n_overlaps > 0
    sizes = [max(b[2], b[3]) for a in coco['annotations'] for b in [a['bbox']]]
    assert max(sizes) > 4 * min(sizes)
    # all categories occur, and some annotated shapes are partly hidden
    assert {a['category_id'] for a in coco['annotations']} == set(range(1, 7))
    occluded = [a for idx in range(10)
                for a in render_synthetic_image(seed=0, index=idx, image_size=128)[1]
                if a['visible_fraction'] < 0.95]
    assert occluded


def test_cli_main_and_tool_script(tmp_path, capsys):
    out = tmp_path / 'cli'
    rc = sc.main(['--out', str(out), '--num-train', '3', '--num-val', '2', '--image-size', '40',
                  '56', '--seed', '2', '--categories', 'ring', 'triangle', '--quiet'])
    assert rc == 0
    printed = capsys.readouterr().out
    assert 'generated' in printed and 'train' in printed
    coco = COCO(str(out / 'annotations' / 'instances_val.json'))
    assert len(coco.getImgIds()) == 2
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['ring', 'triangle']
    assert coco.loadImgs(1)[0]['height'] == 40 and coco.loadImgs(1)[0]['width'] == 56

    # the thin wrapper is importable and runs from the repository root
    spec = importlib.util.spec_from_file_location('make_synthetic_coco',
                                                  REPO_ROOT / 'tools' / 'make_synthetic_coco.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main is sc.main
    res = subprocess.run([
        sys.executable, 'tools/make_synthetic_coco.py', '--out', str(out), '--num-train', '3',
        '--num-val', '2', '--image-size', '40', '56', '--seed', '2', '--categories', 'ring',
        'triangle'
    ], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert 'reused' in res.stdout
    # the module entry point the README and the config hints name; the package does not import
    # it, so runpy has no reason to warn (turned into an error here)
    res = subprocess.run([
        sys.executable, '-W', 'error::RuntimeWarning', '-m', 'ecc_mmdet.datasets.synthetic_coco',
        '--out', str(out), '--num-train', '3', '--num-val', '2', '--image-size', '40', '56',
        '--seed', '2', '--categories', 'ring', 'triangle'
    ], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and 'RuntimeWarning' not in res.stderr, res.stderr
    assert 'reused' in res.stdout
    # the second domain as docs/results.md makes it: shifted style, larger objects, val only
    shifted = out.parent / 'shifted'
    res = subprocess.run([
        sys.executable, 'tools/make_synthetic_coco.py', '--out', str(shifted), '--style',
        'shifted', '--num-train', '0', '--num-val', '2', '--num-calib', '0', '--image-size', '48',
        '64', '--min-object-size', '20'], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60)
    assert res.returncode == 0, res.stderr
    meta = json.loads((shifted / 'meta.json').read_text())
    assert meta['style'] == 'shifted' and meta['min_object_size'] == 20 and meta['num_val'] == 2


def test_held_out_calib_split(tmp_path):
    plain = _gen(tmp_path / 'plain')
    withc = _gen(tmp_path / 'calib', num_calib=5)
    assert 'calib' not in plain['num_images'] and withc['num_images']['calib'] == 5
    # train and val do not change when a calib split is added (pure function of split, index)
    for split in ('train', 'val'):
        assert all(np.array_equal(a, b) for a, b in zip(_pixels(plain, split),
                                                        _pixels(withc, split)))
    calib = _pixels(withc, 'calib')
    assert not any(np.array_equal(c, t) for c in calib for t in _pixels(withc, 'train'))
    assert len(COCO(withc['ann_files']['calib']).getImgIds()) == 5
    # reused when asked again with the same arguments; a set without it stays valid as it was
    assert not ensure_synthetic_coco(tmp_path / 'calib', num_calib=5, **{
        k: v for k, v in SMALL.items()})['generated']
    assert not ensure_synthetic_coco(tmp_path / 'plain', **SMALL)['generated']


# md5 of render_synthetic_image(seed=0, split='train', index=i, image_size=128)[0].tobytes() and
# the boxes, recorded before the shifted style was added: the default rendering must not change
DEFAULT_STYLE_REFERENCE = {
    0: ('3b7c89ea4a3edd0dd1747c90694b7ec9',
        [[76, 36, 13, 14], [22, 44, 14, 7], [72, 56, 27, 25], [1, 46, 35, 35]]),
    1: ('3b9bc1f3a8902c6247b226e6d3c44c23', [[98, 62, 30, 49], [0, 87, 14, 22], [10, 0, 48, 30]]),
    2: ('90f05b761b7ae12ea9996e145de0b523', [[21, 71, 11, 11], [9, 17, 13, 13], [110, 38, 18, 21]]),
}


def test_default_style_unchanged():
    for idx, (md5, boxes) in DEFAULT_STYLE_REFERENCE.items():
        for kw in ({}, dict(style='default')):
            image, anns = render_synthetic_image(seed=0, split='train', index=idx,
                                                 image_size=128, **kw)
            assert hashlib.md5(image.tobytes()).hexdigest() == md5
            assert [a['bbox'] for a in anns] == boxes


def test_shifted_style_deterministic_and_other_than_default():
    for idx in range(3):
        a = render_synthetic_image(seed=0, split='val', index=idx, image_size=64, style='shifted')
        b = render_synthetic_image(seed=0, split='val', index=idx, image_size=64, style='shifted')
        default = render_synthetic_image(seed=0, split='val', index=idx, image_size=64)
        assert a[0].dtype == np.uint8 and a[0].shape == (64, 64, 3)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]
        assert not np.array_equal(a[0], default[0])


def test_shifted_style_annotations_valid_and_all_classes():
    seen = set()
    for idx in range(40):
        image, anns, masks = render_synthetic_image(seed=1, split='train', index=idx,
                                                    image_size=(64, 80), style='shifted',
                                                    return_masks=True)
        assert image.shape == (64, 80, 3) and len(anns) == len(masks)
        for a, m in zip(anns, masks):
            x, y, w, h = a['bbox']
            assert x >= 0 and y >= 0 and x + w <= 80 and y + h <= 64
            assert min(w, h) >= MIN_BOX_SIZE
            ys, xs = np.nonzero(m)
            assert a['area'] == m.sum()
            assert a['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
            assert a['visible_fraction'] >= MIN_VISIBLE_FRACTION
            seen.add(a['category'])
        for m1, m2 in itertools.combinations(masks, 2):
            assert not (m1 & m2).any()
    assert seen == set(SYNTHETIC_CLASSES)


def test_style_argument_meta_and_reuse(tmp_path):
    base = (4, 2, 64, None, 0, 1, 6, 8.0, None, 'png')
    assert 'style' not in normalize_args(*base)
    assert normalize_args(*base, style='default') == normalize_args(*base)
    assert normalize_args(*base, style='shifted')['style'] == 'shifted'
    with pytest.raises(ValueError, match='style must be one of default, shifted'):
        normalize_args(*base, style='foggy')
    with pytest.raises(ValueError, match='default, shifted'):
        render_synthetic_image(image_size=32, style='foggy')
    tiny = dict(num_train=2, num_val=1, image_size=32, progress=False)
    out = tmp_path / 'styled'
    assert ensure_synthetic_coco(out, **tiny)['generated']
    assert 'style' not in _load(out / 'meta.json')
    # a default set is not reused for a shifted request, nor a shifted one for a default request
    shifted = ensure_synthetic_coco(out, style='shifted', **tiny)
    assert shifted['generated'] and _load(out / 'meta.json')['style'] == 'shifted'
    assert not ensure_synthetic_coco(out, style='shifted', **tiny)['generated']
    on_disk = _pixels(shifted, 'train')[1]
    assert np.array_equal(on_disk, render_synthetic_image(index=1, image_size=32,
                                                          style='shifted')[0])
    assert 'shifted' in _load(shifted['ann_files']['val'])['info']['description']
    assert ensure_synthetic_coco(out, **tiny)['generated']
    assert 'style' not in _load(out / 'meta.json')


def test_cli_style(tmp_path, capsys):
    out = tmp_path / 'cli_shifted'
    rc = sc.main(['--out', str(out), '--num-train', '2', '--num-val', '1', '--num-calib', '0',
                  '--image-size', '32', '--style', 'shifted', '--quiet'])
    assert rc == 0 and 'shifted style' in capsys.readouterr().out
    assert _load(out / 'meta.json')['style'] == 'shifted'
    assert len(COCO(str(out / 'annotations' / 'instances_train.json')).getImgIds()) == 2
    with pytest.raises(SystemExit):
        sc.main(['--out', str(out), '--style', 'foggy'])
    assert 'invalid choice' in capsys.readouterr().err


@pytest.mark.parametrize('style', ['default', 'shifted'])
def test_smallest_images_render(style):
    # clutter ellipses and blobs had an empty size range below 20-25 px (index 3 raised)
    for idx in range(8):
        image, _ = render_synthetic_image(seed=3, split='calib', index=idx, image_size=16,
                                          style=style)
        assert image.shape == (16, 16, 3)
