"""The image-codec cloud-only baselines (JPEG, WebP, AVIF; original or fitted size) and their
pipeline helper."""
import os.path as osp

import cv2
import numpy as np
import pytest
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope

from mmdet.datasets.transforms import PackDetInputs
from mmdet.registry import TRANSFORMS

from ecc_mmdet.structures import comm_record as accounting
from ecc_mmdet.datasets.transforms import (CompressImage, JPEGCompressImage,
                                           add_image_codec_baseline, add_jpeg_baseline)


def _image(h=96, w=128, seed=0):
    """A smooth BGR image with some structure (gradients, shapes, mild noise)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], -1)
    img = img + cv2.GaussianBlur(rng.randn(h, w, 3).astype(np.float32) * 60, (0, 0), 2)
    img = np.clip(img, 0, 255).astype(np.uint8)
    cv2.circle(img, (w // 3, h // 2), h // 5, (20, 200, 40), -1)
    cv2.rectangle(img, (w // 2, h // 4), (w - 10, h - 10), (220, 30, 90), -1)
    return img


def test_bytes_decrease_with_quality():
    img = _image()
    sizes = []
    for q in (95, 75, 50, 20, 5):
        r = JPEGCompressImage(quality=q)(dict(img=img.copy()))
        rec = accounting.CommRecord.from_dict(r['ecc_comm'])
        assert rec.codec == f'jpeg_q{q}' and rec.offloaded and rec.header_bytes == 0
        assert rec.estimated_bits is None and rec.edge_flops == 0.0 and rec.edge_params == 0
        assert rec.codec_time_s is not None and rec.codec_time_s >= 0
        # the byte count is the real JPEG size
        ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert rec.payload_bytes == buf.size
        sizes.append(rec.payload_bytes)
    assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


@pytest.mark.parametrize('shape', [(48, 64, 3), (48, 64), (48, 64, 1)])
def test_decoded_image_replaces_input(shape):
    img = _image(48, 64)
    if len(shape) == 2:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[..., None]
    r = JPEGCompressImage(quality=5)(dict(img=img.copy()))
    out = r['img']
    assert out.shape == img.shape and out.dtype == np.uint8
    err = np.abs(out.astype(np.int32) - img.astype(np.int32)).mean()
    assert err > 1.0  # quality 5 visibly changes the image
    assert err < 40.0  # ... but it is still the same picture
    hi = JPEGCompressImage(quality=100)(dict(img=img.copy()))['img']
    assert np.abs(hi.astype(np.int32) - img.astype(np.int32)).mean() < err


def test_input_errors():
    for q in (0, 101, 50.5, True, '90'):
        with pytest.raises(ValueError, match='quality'):
            JPEGCompressImage(quality=q)
    with pytest.raises(KeyError, match="no 'img'"):
        JPEGCompressImage(50)(dict(img_path='x.jpg'))
    with pytest.raises(TypeError, match='uint8'):
        JPEGCompressImage(50)(dict(img=np.zeros((8, 8, 3), np.float32)))
    with pytest.raises(ValueError, match='shape'):
        JPEGCompressImage(50)(dict(img=np.zeros((8, 8, 4), np.uint8)))


def test_registered_and_packed_into_metainfo():
    init_default_scope('mmdet')
    t = TRANSFORMS.build(dict(type='JPEGCompressImage', quality=30))
    assert isinstance(t, JPEGCompressImage)
    img = _image()
    r = t(dict(img=img, img_id=0, img_path='a.jpg', ori_shape=img.shape[:2],
               img_shape=img.shape[:2]))
    pack = PackDetInputs(meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'ecc_comm'))
    sample = pack(r)['data_samples']
    rec = accounting.read(sample)
    assert rec is not None and rec.codec == 'jpeg_q30' and rec.payload_bytes > 0
    assert accounting.read(sample.to_dict()) == rec  # what the evaluator receives


BASE = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(64, 48), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]


def test_add_jpeg_baseline_inserts_after_loading():
    before = [dict(d) for d in BASE]
    out = add_jpeg_baseline(BASE, quality=40)
    assert BASE == before  # input untouched
    assert [s['type'] for s in out] == ['LoadImageFromFile', 'CompressImage', 'Resize',
                                        'LoadAnnotations', 'PackDetInputs']
    assert out[1]['quality'] == 40 and out[1]['codec'] == 'jpeg'
    assert out[-1]['meta_keys'] == ('img_id', 'img_path', 'ori_shape', 'img_shape',
                                    'scale_factor', 'ecc_comm')
    # default meta_keys, scoped type names
    out = add_jpeg_baseline([dict(type='mmdet.LoadImageFromFile'),
                             dict(type='mmdet.PackDetInputs')], 90)
    assert out[1]['type'] == 'CompressImage'
    assert out[-1]['meta_keys'][-1] == 'ecc_comm'
    assert set(PackDetInputs().meta_keys) < set(out[-1]['meta_keys'])


def test_add_jpeg_baseline_errors():
    with pytest.raises(ValueError, match='LoadImageFromFile'):
        add_jpeg_baseline(BASE[1:], 50)
    with pytest.raises(ValueError, match='PackDetInputs'):
        add_jpeg_baseline(BASE[:-1], 50)
    with pytest.raises(ValueError, match='already contains'):
        add_jpeg_baseline(add_jpeg_baseline(BASE, 50), 50)
    with pytest.raises(ValueError, match='quality'):
        add_jpeg_baseline(BASE, 0)


def test_pipeline_end_to_end_into_metric(tmp_path):
    """Real file -> pipeline from add_jpeg_baseline -> packed sample -> CommunicationMetric."""
    from ecc_mmdet.evaluation import CommunicationMetric
    init_default_scope('mmdet')
    img = _image()
    path = osp.join(str(tmp_path), 'img.png')
    cv2.imwrite(path, img)
    pipeline = [s for s in add_jpeg_baseline(BASE, 20) if s['type'] != 'LoadAnnotations']
    packed = Compose(pipeline)(dict(img_path=path, img_id=3))
    sample = packed['data_samples']
    assert tuple(packed['inputs'].shape[1:]) == (48, 64)  # resized after compression
    rec = accounting.read(sample)
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 20])  # original resolution
    assert rec.payload_bytes == buf.size
    metric = CommunicationMetric(bandwidth_mbps=1.0)
    metric.process({}, [sample.to_dict()])
    m = metric.compute_metrics(metric.results)
    assert m['bytes_mean'] == buf.size and m['offload_ratio'] == 1.0
    assert m['uplink_ms_at_1mbps'] == pytest.approx(buf.size * 8 / 1e6 * 1e3)
    assert 'latency_ms_at_1mbps' not in m  # no detector times in the JPEG record


@pytest.mark.parametrize('codec,ext,flag', [('jpeg', '.jpg', cv2.IMWRITE_JPEG_QUALITY),
                                            ('webp', '.webp', cv2.IMWRITE_WEBP_QUALITY),
                                            ('avif', '.avif', cv2.IMWRITE_AVIF_QUALITY)])
def test_each_codec_counts_its_real_file_and_hands_on_its_decoded_image(codec, ext, flag):
    img = _image()
    sizes = []
    for q in (90, 50, 10):
        r = CompressImage(codec, q)(dict(img=img.copy()))
        rec = accounting.CommRecord.from_dict(r['ecc_comm'])
        ok, buf = cv2.imencode(ext, img, [flag, q])
        assert rec.payload_bytes == buf.size and rec.codec == f'{codec}_q{q}'
        # what the detector sees is exactly the decoded file
        np.testing.assert_array_equal(r['img'], cv2.imdecode(buf, cv2.IMREAD_COLOR))
        sizes.append(rec.payload_bytes)
    assert sizes[0] > sizes[1] > sizes[2], sizes


def test_fitted_size_sends_fewer_pixels_and_keeps_the_camera_frame():
    img = _image(96, 128)
    full = CompressImage('webp', 50)(dict(img=img.copy()))
    fit = CompressImage('webp', 50, max_size=(64, 48))(dict(img=img.copy()))
    small = cv2.resize(img, (64, 48), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode('.webp', small, [cv2.IMWRITE_WEBP_QUALITY, 50])
    rec = accounting.CommRecord.from_dict(fit['ecc_comm'])
    assert rec.payload_bytes == buf.size < accounting.CommRecord.from_dict(
        full['ecc_comm']).payload_bytes
    assert rec.codec == 'webp_q50_fit64x48'
    assert fit['img'].shape == img.shape  # scaled back: ori_shape and box coordinates unchanged
    up = cv2.resize(cv2.imdecode(buf, cv2.IMREAD_COLOR), (128, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(fit['img'], up)
    # never scaled up: an image already within max_size is sent as it is
    same = CompressImage('webp', 50, max_size=(1333, 800))(dict(img=img.copy()))
    assert same['ecc_comm']['payload_bytes'] == full['ecc_comm']['payload_bytes']


def test_image_codec_settings_are_checked():
    with pytest.raises(ValueError, match="codec must be one of \\['avif', 'jpeg', 'webp'\\]"):
        CompressImage('jxl', 50)
    with pytest.raises(ValueError, match='webp quality must be an integer in 1..100'):
        CompressImage('webp', 0)
    CompressImage('avif', 0)  # AVIF's scale starts at 0
    with pytest.raises(ValueError, match='max_size must be'):
        CompressImage('jpeg', 50, max_size=(64, ))
    with pytest.raises(ValueError, match='already contains'):
        add_image_codec_baseline(add_image_codec_baseline(BASE, 'webp', 30), 'avif', 30)
    t = TRANSFORMS.build(dict(type='CompressImage', codec='avif', quality=20, speed=8))
    assert isinstance(t, CompressImage) and t.name == 'avif_q20'
