"""Cloud-only baseline: the edge sends the image itself, JPEG-encoded.

The detector then runs entirely in the cloud on the *decoded* JPEG, so its accuracy reflects the
compression artefacts, and the uplink cost is the real size of the JPEG file.
"""
import copy
import inspect
import time
from typing import List, Optional

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmdet.registry import TRANSFORMS

from ...structures.comm_record import COMM_KEY, CommRecord

#: pipeline step types after which :func:`add_jpeg_baseline` inserts the transform
_LOAD_TYPES = ('LoadImageFromFile', 'LoadImageFromNDArray')


@TRANSFORMS.register_module()
class JPEGCompressImage(BaseTransform):
    """JPEG-encode ``results['img']`` at ``quality``, replace it by the decoded JPEG, and record
    the uplink bytes.

    Place it in the **test** pipeline right after ``LoadImageFromFile`` (on the original-resolution
    image, before ``Resize``: the edge sends the camera image, the cloud resizes), and add
    ``'ecc_comm'`` to ``PackDetInputs``' ``meta_keys`` so the record reaches the evaluator's
    ``CommunicationMetric``::

        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='JPEGCompressImage', quality=75),
            dict(type='Resize', scale=(1333, 800), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs',
                 meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                            'ecc_comm')),
        ]

    :func:`add_jpeg_baseline` makes both edits on an existing test pipeline.

    Required keys: ``img`` (uint8, HxW, HxWx1 or HxWx3 BGR).
    Modified keys: ``img`` (decoded JPEG, same shape and dtype).
    Added keys: ``ecc_comm`` — ``CommRecord(payload_bytes=len(jpeg), header_bytes=0,
    estimated_bits=None, codec=f'jpeg_q{quality}', offloaded=True, edge_flops=0.0,
    edge_params=0, codec_time_s=encode + decode time).to_dict()``.

    Args:
        quality (int): JPEG quality, 1 (smallest) .. 100 (best).
    """

    def __init__(self, quality: int = 90) -> None:
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
                or not 1 <= int(quality) <= 100:
            raise ValueError(f'JPEGCompressImage: quality must be an integer in 1..100, '
                             f'got {quality!r}')
        self.quality = int(quality)

    def transform(self, results: dict) -> dict:
        img = results.get('img') if isinstance(results, dict) else None
        if img is None:
            raise KeyError("JPEGCompressImage: results has no 'img'; put the transform after "
                           'LoadImageFromFile in the pipeline.')
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise TypeError('JPEGCompressImage: expects a uint8 numpy image (LoadImageFromFile '
                            'with to_float32=False), got '
                            f'{type(img).__name__} of dtype {getattr(img, "dtype", None)}')
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
            raise ValueError('JPEGCompressImage: expects an HxW, HxWx1 or HxWx3 (BGR) image, got '
                             f'shape {img.shape}')

        t0 = time.perf_counter()
        ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(img),
                               [int(cv2.IMWRITE_JPEG_QUALITY), self.quality])
        if not ok:
            raise RuntimeError(f'JPEGCompressImage: cv2.imencode failed for shape {img.shape}')
        gray = img.ndim == 2 or img.shape[2] == 1
        decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        codec_time = time.perf_counter() - t0
        if decoded is None:
            raise RuntimeError('JPEGCompressImage: cv2.imdecode failed on its own JPEG')
        decoded = decoded.reshape(img.shape).astype(np.uint8, copy=False)

        results['img'] = decoded
        record = CommRecord(
            payload_bytes=int(buf.size), header_bytes=0, estimated_bits=None,
            codec=f'jpeg_q{self.quality}', offloaded=True, edge_flops=0.0, edge_params=0,
            codec_time_s=codec_time)
        results[COMM_KEY] = record.to_dict()
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(quality={self.quality})'


def _step_name(step) -> Optional[str]:
    t = step.get('type') if hasattr(step, 'get') else None
    if t is None:
        return None
    if isinstance(t, str):
        return t.split('.')[-1]
    return getattr(t, '__name__', None)


def _default_pack_meta_keys() -> tuple:
    from mmdet.datasets.transforms import PackDetInputs
    return tuple(inspect.signature(PackDetInputs.__init__).parameters['meta_keys'].default)


def add_jpeg_baseline(pipeline: list, quality: int) -> List[dict]:
    """A copy of the test ``pipeline`` turned into the JPEG cloud-only baseline.

    Inserts ``dict(type='JPEGCompressImage', quality=quality)`` right after the first
    ``LoadImageFromFile`` (or ``LoadImageFromNDArray``) step and appends ``'ecc_comm'`` to the
    ``meta_keys`` of every ``PackDetInputs`` step (its default keys when it sets none). The input
    is not modified.

    Raises:
        ValueError: ``quality`` out of 1..100, no image-loading step, no ``PackDetInputs`` step,
            or the pipeline already contains ``JPEGCompressImage``.
    """
    JPEGCompressImage(quality)  # validates quality with the transform's own message
    steps = [copy.deepcopy(s) for s in pipeline]
    names = [_step_name(s) for s in steps]
    if 'JPEGCompressImage' in names:
        raise ValueError('add_jpeg_baseline: the pipeline already contains JPEGCompressImage')
    load_idx = next((i for i, n in enumerate(names) if n in _LOAD_TYPES), None)
    if load_idx is None:
        raise ValueError('add_jpeg_baseline: the pipeline has no LoadImageFromFile step to put '
                         f'the JPEG transform after; step types: {names}')
    pack_idx = [i for i, n in enumerate(names) if n == 'PackDetInputs']
    if not pack_idx:
        raise ValueError('add_jpeg_baseline: the pipeline has no PackDetInputs step, so the '
                         f"'{COMM_KEY}' record could not reach the evaluator; step types: {names}")
    for i in pack_idx:
        keys = steps[i].get('meta_keys')
        keys = _default_pack_meta_keys() if keys is None else tuple(keys)
        if COMM_KEY not in keys:
            keys = keys + (COMM_KEY, )
        steps[i]['meta_keys'] = keys
    steps.insert(load_idx + 1, dict(type='JPEGCompressImage', quality=int(quality)))
    return steps
