"""COCO-C-style corruptions (Michaelis et al. 2019: the ImageNet-C set on detection images) as a
test-pipeline transform, for robustness evaluation and for a distribution shift to adapt to.

The corruptions themselves come from ``imagecorruptions`` (the maintained fork
``imagecorruptions-imaug`` of the package COCO-C used); this module only makes them a seeded,
validated mmcv transform. That package draws from NumPy's *global* random state, so each call
runs under a seed derived from (``seed``, the image's path or id, corruption, severity) and the
caller's global state is restored afterwards: the same image always gets the same corruption,
whatever order or process the dataset is read in.
"""
import hashlib
import inspect
from typing import Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

__all__ = ['CORRUPTIONS', 'CorruptImage', 'RandomCorruption', 'add_corruption']

#: the 15 benchmark corruptions of ImageNet-C / COCO-C (the package's 'common' set)
BENCHMARK_CORRUPTIONS = (
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
    'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
    'elastic_transform', 'pixelate', 'jpeg_compression')
#: the 4 held-out ones (ImageNet-C's 'validation' corruptions)
EXTRA_CORRUPTIONS = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS


def _corrupt_fn(corruption: str):
    """The package's ``corrupt`` and whether ``corruption`` takes its own ``seed`` (those that
    draw from a generator of their own, e.g. skimage's or numba's, ignore the global state)."""
    try:
        import imagecorruptions
        from imagecorruptions import corruptions
    except ImportError as e:  # pragma: no cover - the setup installs it
        raise ImportError(
            'CorruptImage needs the imagecorruptions package: pip install -r '
            'requirements/robustness.txt (imagecorruptions-imaug, scikit-image, numba)') from e
    takes_seed = 'seed' in inspect.signature(getattr(corruptions, corruption)).parameters
    return imagecorruptions.corrupt, takes_seed


def _image_seed(seed: int, key: str, corruption: str, severity: int) -> int:
    h = hashlib.sha256(f'{seed}|{key}|{corruption}|{severity}'.encode()).digest()
    return int.from_bytes(h[:4], 'little')


@TRANSFORMS.register_module()
class CorruptImage(BaseTransform):
    """Apply one corruption at one severity to ``results['img']`` (uint8 BGR, as loaded).

    Put it right after ``LoadImageFromFile`` (:func:`add_corruption` does), so boxes and the
    rest of the pipeline see a corrupted camera image.

    Args:
        corruption: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) .. 5 (strong); 0 leaves the image unchanged (the clean reference).
        seed: base seed; the per-image seed also depends on the image's path (or id).
    """

    def __init__(self, corruption: str, severity: int = 3, seed: int = 0):
        if corruption not in CORRUPTIONS:
            raise ValueError(f'CorruptImage: unknown corruption {corruption!r}; choose one of '
                             f'{", ".join(CORRUPTIONS)}')
        if isinstance(severity, bool) or not isinstance(severity, int) or \
                not 0 <= severity <= 5:
            raise ValueError(f'CorruptImage: severity must be an int in 0..5 (0 = clean), got '
                             f'{severity!r}')
        self.corruption, self.severity, self.seed = corruption, severity, int(seed)
        self._corrupt, self._takes_seed = _corrupt_fn(corruption)

    def _key(self, results: dict) -> str:
        return str(results.get('img_path') or results.get('img_id') or '')

    def transform(self, results: dict) -> Optional[dict]:
        img = results['img']
        if self.severity == 0:
            return results
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'CorruptImage expects a uint8 HxWx3 image, got {img.dtype} '
                             f'{img.shape}')
        state = np.random.get_state()
        seed = _image_seed(self.seed, self._key(results), self.corruption, self.severity)
        try:
            np.random.seed(seed)
            # the package works in RGB (saturate, brightness go through HSV)
            out = self._corrupt(np.ascontiguousarray(img[..., ::-1]),
                                corruption_name=self.corruption, severity=self.severity,
                                **(dict(seed=seed) if self._takes_seed else {}))
        finally:
            np.random.set_state(state)
        out = np.ascontiguousarray(np.asarray(out)[..., ::-1])
        if out.shape != img.shape:  # some corruptions crop/resize internally: keep the geometry
            import cv2
            out = cv2.resize(out, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
        results['img'] = out.astype(np.uint8, copy=False)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(corruption={self.corruption!r}, '
                f'severity={self.severity}, seed={self.seed})')


@TRANSFORMS.register_module()
class RandomCorruption(BaseTransform):
    """Training augmentation: with probability ``prob``, one of ``corruptions`` at a severity
    drawn from ``severities`` (NumPy's global state, seeded per worker by the Runner).

    The corruptions the project's benchmarks evaluate (:data:`BENCHMARK_CORRUPTIONS`: robustness,
    routing under shift, online adaptation) are refused: a model trained on them would be scored
    on its own augmentation. The default is the four held-out ones (:data:`EXTRA_CORRUPTIONS`).
    """

    def __init__(self, corruptions=EXTRA_CORRUPTIONS, severities=(1, 2, 3, 4, 5),
                 prob: float = 0.5):
        corruptions, severities = tuple(corruptions), tuple(severities)
        unknown = [c for c in corruptions if c not in CORRUPTIONS]
        if unknown or not corruptions:
            raise ValueError(f'RandomCorruption: unknown corruptions {unknown}; choose from '
                             f'{", ".join(EXTRA_CORRUPTIONS)}')
        evaluated = [c for c in corruptions if c in BENCHMARK_CORRUPTIONS]
        if evaluated:
            raise ValueError(f'RandomCorruption: {evaluated} are corruptions the benchmarks '
                             'evaluate; train on others (default: '
                             f'{", ".join(EXTRA_CORRUPTIONS)})')
        if not severities or any(isinstance(v, bool) or v not in (1, 2, 3, 4, 5)
                                 for v in severities):
            raise ValueError(f'RandomCorruption: severities must be in 1..5, got {severities}')
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f'RandomCorruption: prob must be in [0, 1], got {prob}')
        self.corruptions, self.severities, self.prob = corruptions, severities, float(prob)

    def transform(self, results: dict) -> Optional[dict]:
        if np.random.rand() >= self.prob:
            return results
        c = self.corruptions[np.random.randint(len(self.corruptions))]
        s = int(self.severities[np.random.randint(len(self.severities))])
        results = CorruptImage(c, s, seed=int(np.random.randint(2**31))).transform(results)
        results['corruption'] = (c, s)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(corruptions={self.corruptions}, '
                f'severities={self.severities}, prob={self.prob})')


def add_corruption(pipeline: list, corruption: str, severity: int, seed: int = 0) -> list:
    """A copy of the test ``pipeline`` with :class:`CorruptImage` right after the image is
    loaded (validated first, with the transform's own messages)."""
    import copy
    CorruptImage(corruption, severity, seed)
    steps = [copy.deepcopy(s) for s in pipeline]
    names = [str(s.get('type', '')).split('.')[-1] for s in steps]
    if 'CorruptImage' in names:
        raise ValueError('add_corruption: the pipeline already corrupts its images')
    load = next((i for i, n in enumerate(names)
                 if n in ('LoadImageFromFile', 'LoadImageFromNDArray')), None)
    if load is None:
        raise ValueError(f'add_corruption: no LoadImageFromFile step to put the corruption '
                         f'after; step types: {names}')
    steps.insert(load + 1, dict(type='CorruptImage', corruption=corruption, severity=severity,
                                seed=seed))
    return steps
