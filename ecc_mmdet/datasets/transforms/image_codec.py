"""Cloud-only baselines: the edge sends the image itself, compressed with an image codec.

The detector then runs entirely in the cloud on the *decoded* image, so its accuracy reflects the
compression artefacts, and the uplink cost is the real size of the encoded file. The codecs are
OpenCV's (pinned ``opencv-python``): JPEG, WebP and AVIF (libavif); which ones this OpenCV build
can encode is checked when the transform is built, with an error naming what is missing.
"""
import copy
import inspect
import time
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmdet.registry import TRANSFORMS

from ...structures.comm_record import COMM_KEY, CommRecord

#: codec name -> (file extension for cv2.imencode, quality flag name, quality range)
IMAGE_CODECS = {
    'jpeg': ('.jpg', 'IMWRITE_JPEG_QUALITY', (1, 100)),
    'webp': ('.webp', 'IMWRITE_WEBP_QUALITY', (1, 100)),
    'avif': ('.avif', 'IMWRITE_AVIF_QUALITY', (0, 100)),
}

#: pipeline step types after which :func:`add_image_codec_baseline` inserts the transform
_LOAD_TYPES = ('LoadImageFromFile', 'LoadImageFromNDArray')


def _check_codec_available(codec: str) -> None:
    """Raise a clear error when this OpenCV build cannot encode ``codec``."""
    ext, flag, _ = IMAGE_CODECS[codec]
    probe = np.zeros((8, 8, 3), np.uint8)
    try:
        ok = hasattr(cv2, flag) and cv2.imencode(ext, probe)[0]
    except cv2.error:
        ok = False
    if not ok:
        raise RuntimeError(
            f'CompressImage: this OpenCV ({cv2.__version__}) cannot encode {codec} ({ext}); '
            'install the opencv-python version pinned in requirements/runtime.txt (its wheels '
            'include libwebp and libavif), or choose another codec of '
            f'{sorted(IMAGE_CODECS)}')


def _fit_within(shape: Tuple[int, int], max_size: Sequence[int]) -> Tuple[int, int]:
    """(h, w) scaled down (never up) to fit ``max_size`` = (w, h) keeping the aspect ratio."""
    h, w = shape
    long_edge, short_edge = max(max_size), min(max_size)
    scale = min(1.0, long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def decode_image(file_bytes, shape: Tuple[int, int], gray: bool = False) -> np.ndarray:
    """The cloud's side of :class:`CompressImage`: decode the file and scale it back to the
    camera resolution ``shape`` = (h, w) (the edge may have sent it scaled down, never up).
    ValueError when the file does not decode or is larger than ``shape``."""
    buf = np.frombuffer(bytes(file_bytes), np.uint8)
    decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    h, w = shape
    if decoded is None:
        raise ValueError('the image file does not decode')
    if decoded.shape[0] > h or decoded.shape[1] > w:
        raise ValueError(f'the image file holds {decoded.shape[:2]} pixels, more than the '
                         f'image it stands for ({h}, {w})')
    if decoded.shape[:2] != (h, w):
        decoded = cv2.resize(decoded, (w, h), interpolation=cv2.INTER_LINEAR)
    return decoded


@TRANSFORMS.register_module()
class CompressImage(BaseTransform):
    """Encode ``results['img']`` with an image codec, replace it by the decoded image and record
    the uplink bytes.

    Place it in the **test** pipeline right after ``LoadImageFromFile`` (on the camera image,
    before ``Resize``) and add ``'ecc_comm'`` to ``PackDetInputs``' ``meta_keys`` so the record
    reaches ``CommunicationMetric`` (:func:`add_image_codec_baseline` makes both edits); with the
    Runner, also add ``custom_hooks=[dict(type='CloudOnlyAccountingHook')]`` so the cloud's time
    and FLOPs are counted::

        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='CompressImage', codec='webp', quality=30, max_size=(1333, 800)),
            dict(type='Resize', scale=(1333, 800), keep_ratio=True),
            ...
            dict(type='PackDetInputs', meta_keys=(..., 'ecc_comm')),
        ]

    Required keys: ``img`` (uint8, HxW, HxWx1 or HxWx3 BGR).
    Modified keys: ``img`` (decoded image, same shape and dtype as the input).
    Added keys: ``ecc_comm`` — ``CommRecord(payload_bytes=len(file), header_bytes=0,
    estimated_bits=None, codec=name, offloaded=True, edge_flops=0.0, edge_params=0,
    codec_time_s=resize + encode + decode time).to_dict()``.

    Args:
        codec (str): 'jpeg', 'webp' or 'avif'.
        quality (int): the codec's quality, 1 (smallest) .. 100 (best); AVIF also takes 0.
        max_size (tuple[int, int], optional): (w, h) like ``Resize.scale``: what a careful edge
            sends -- the image scaled *down* (never up, aspect ratio kept) to the detector's input
            size before encoding. The cloud scales the decoded image back to the camera
            resolution, so box coordinates and ``ori_shape`` are unchanged. None: the original.
        speed (int, optional): AVIF encoder speed 0 (slowest, smallest) .. 10; None: OpenCV's
            default. Ignored by the other codecs.
    """

    def __init__(self, codec: str = 'jpeg', quality: int = 90,
                 max_size: Optional[Sequence[int]] = None, speed: Optional[int] = None) -> None:
        if codec not in IMAGE_CODECS:
            raise ValueError(f'CompressImage: codec must be one of {sorted(IMAGE_CODECS)}, '
                             f'got {codec!r}')
        lo, hi = IMAGE_CODECS[codec][2]
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) \
                or not lo <= int(quality) <= hi:
            raise ValueError(f'CompressImage: {codec} quality must be an integer in {lo}..{hi}, '
                             f'got {quality!r}')
        if max_size is not None:
            if len(max_size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                         or v < 1 for v in max_size):
                raise ValueError('CompressImage: max_size must be (w, h) positive ints, got '
                                 f'{max_size!r}')
            max_size = (int(max_size[0]), int(max_size[1]))
        if speed is not None and (isinstance(speed, bool) or not 0 <= int(speed) <= 10):
            raise ValueError(f'CompressImage: speed must be in 0..10, got {speed!r}')
        _check_codec_available(codec)
        self.codec, self.quality, self.max_size = codec, int(quality), max_size
        self.speed = None if speed is None else int(speed)
        ext, flag, _ = IMAGE_CODECS[codec]
        self._ext = ext
        self._params = [int(getattr(cv2, flag)), self.quality]
        if codec == 'avif' and self.speed is not None:
            self._params += [int(cv2.IMWRITE_AVIF_SPEED), self.speed]

    @property
    def name(self) -> str:
        """The codec's name in reports, e.g. 'jpeg_q30' or 'webp_q30_fit1333x800'."""
        fit = '' if self.max_size is None else f'_fit{self.max_size[0]}x{self.max_size[1]}'
        return f'{self.codec}_q{self.quality}{fit}'

    def encode(self, img: np.ndarray) -> np.ndarray:
        """The file the edge sends (uint8 array): ``img`` (uint8 HxW, HxWx1 or HxWx3) scaled
        down to ``max_size`` and encoded; :func:`decode_image` is the cloud's side."""
        h, w = img.shape[:2]
        sent = np.ascontiguousarray(img if img.ndim == 2 or img.shape[2] == 3 else img[..., 0])
        if self.max_size is not None:
            sh, sw = _fit_within((h, w), self.max_size)
            if (sh, sw) != (h, w):
                sent = cv2.resize(sent, (sw, sh), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(self._ext, sent, self._params)
        if not ok:
            raise RuntimeError(f'{type(self).__name__}: cv2.imencode({self._ext}) failed for '
                               f'shape {img.shape}')
        return buf

    def transform(self, results: dict) -> dict:
        img = results.get('img') if isinstance(results, dict) else None
        cls = type(self).__name__
        if img is None:
            raise KeyError(f"{cls}: results has no 'img'; put the transform after "
                           'LoadImageFromFile in the pipeline.')
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise TypeError(f'{cls}: expects a uint8 numpy image (LoadImageFromFile '
                            'with to_float32=False), got '
                            f'{type(img).__name__} of dtype {getattr(img, "dtype", None)}')
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3))):
            raise ValueError(f'{cls}: expects an HxW, HxWx1 or HxWx3 (BGR) image, got '
                             f'shape {img.shape}')

        t0 = time.perf_counter()
        buf = self.encode(img)
        try:  # the cloud scales back to the camera resolution
            decoded = decode_image(buf, img.shape[:2], gray=img.ndim == 2 or img.shape[2] == 1)
        except ValueError as e:
            raise RuntimeError(f'{cls}: {e} (its own {self.codec} file)') from e
        codec_time = time.perf_counter() - t0
        decoded = decoded.reshape(img.shape).astype(np.uint8, copy=False)

        results['img'] = decoded
        record = CommRecord(
            payload_bytes=int(buf.size), header_bytes=0, estimated_bits=None, codec=self.name,
            offloaded=True, edge_flops=0.0, edge_params=0, codec_time_s=codec_time)
        results[COMM_KEY] = record.to_dict()
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(codec={self.codec!r}, quality={self.quality}, '
                f'max_size={self.max_size})')


@TRANSFORMS.register_module()
class JPEGCompressImage(CompressImage):
    """``CompressImage(codec='jpeg')``: the JPEG cloud-only baseline, kept for existing configs.

    Args:
        quality (int): JPEG quality, 1 (smallest) .. 100 (best).
        max_size (tuple[int, int], optional): see :class:`CompressImage`.
    """

    def __init__(self, quality: int = 90, max_size: Optional[Sequence[int]] = None) -> None:
        super().__init__('jpeg', quality, max_size)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(quality={self.quality}, max_size={self.max_size})'


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


def add_image_codec_baseline(pipeline: list, codec: str, quality: int,
                             max_size: Optional[Sequence[int]] = None) -> List[dict]:
    """A copy of the test ``pipeline`` turned into a cloud-only baseline with an image codec.

    Inserts ``dict(type='CompressImage', codec=codec, quality=quality, max_size=max_size)`` right
    after the first ``LoadImageFromFile`` (or ``LoadImageFromNDArray``) step and appends
    ``'ecc_comm'`` to the ``meta_keys`` of every ``PackDetInputs`` step (its default keys when it
    sets none). The input is not modified.

    Raises:
        ValueError: bad codec settings, no image-loading step, no ``PackDetInputs`` step, or the
            pipeline already sends the image.
    """
    CompressImage(codec, quality, max_size)  # validates with the transform's own messages
    steps = [copy.deepcopy(s) for s in pipeline]
    names = [_step_name(s) for s in steps]
    if {'CompressImage', 'JPEGCompressImage'} & set(names):
        raise ValueError('add_image_codec_baseline: the pipeline already contains an image codec '
                         'transform (CompressImage / JPEGCompressImage)')
    load_idx = next((i for i, n in enumerate(names) if n in _LOAD_TYPES), None)
    if load_idx is None:
        raise ValueError('add_image_codec_baseline: the pipeline has no LoadImageFromFile step to '
                         f'put the codec transform after; step types: {names}')
    pack_idx = [i for i, n in enumerate(names) if n == 'PackDetInputs']
    if not pack_idx:
        raise ValueError('add_image_codec_baseline: the pipeline has no PackDetInputs step, so '
                         f"the '{COMM_KEY}' record could not reach the evaluator; step types: "
                         f'{names}')
    for i in pack_idx:
        keys = steps[i].get('meta_keys')
        keys = _default_pack_meta_keys() if keys is None else tuple(keys)
        if COMM_KEY not in keys:
            keys = keys + (COMM_KEY, )
        steps[i]['meta_keys'] = keys
    step = dict(type='CompressImage', codec=codec, quality=int(quality))
    if max_size is not None:
        step['max_size'] = tuple(int(v) for v in max_size)
    steps.insert(load_idx + 1, step)
    return steps


def add_jpeg_baseline(pipeline: list, quality: int,
                      max_size: Optional[Sequence[int]] = None) -> List[dict]:
    """:func:`add_image_codec_baseline` with JPEG."""
    return add_image_codec_baseline(pipeline, 'jpeg', quality, max_size)
