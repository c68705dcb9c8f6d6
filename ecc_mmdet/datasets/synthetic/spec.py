"""What a synthetic set is made of: its classes, splits, limits and normalised arguments.

The normalised argument dict is both what the renderer reads and what ``meta.json`` records, so a
set is reused only when it was generated with the same (normalised) arguments.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

#: The shape categories, in their canonical order.
SYNTHETIC_CLASSES: Tuple[str, ...] = ('circle', 'rectangle', 'triangle', 'star', 'ring', 'cross')

#: Bumped whenever the rendering changes, so :func:`ensure_synthetic_coco` regenerates old sets.
GENERATOR_VERSION = 1

#: ``calib``: optional held-out images (``num_calib``) that no model trains or is scored on, for
#: calibrating and fitting routers (dynamic inference)
SPLITS = ('train', 'val', 'calib')
SPLIT_IDS = {'train': 0, 'val': 1, 'calib': 2}

#: Rendering domains: ``default`` is what models train on; ``shifted`` (other textures,
#: backgrounds, clutter and sensor effects; same classes and box rules) is for testing them on data
#: unlike their training set, and nothing is trained or tuned on it.
STYLES = ('default', 'shifted')

#: An instance is annotated only if at least this fraction of its full shape is visible ...
MIN_VISIBLE_FRACTION = 0.3
#: ... and its visible box is at least this many pixels wide and high.
MIN_BOX_SIZE = 4
#: Default smallest object size (diameter of the circumscribed circle, px).
DEFAULT_MIN_OBJECT_SIZE = 8.0

ImageSize = Union[int, Sequence[int]]


def _normalize_size(image_size: ImageSize) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        size = [int(v) for v in image_size]
        if len(size) == 1:
            size = size * 2
        if len(size) != 2:
            raise ValueError(f'image_size must be an int or (H, W), got {image_size!r}')
        h, w = size
    if h < 16 or w < 16:
        raise ValueError(f'image_size must be at least 16x16, got {(h, w)}')
    return h, w


def _normalize_categories(categories: Optional[Sequence[str]]) -> Tuple[str, ...]:
    if categories is None:
        return SYNTHETIC_CLASSES
    if isinstance(categories, str):
        categories = [categories]
    out: List[str] = []
    for name in categories:
        if name not in SYNTHETIC_CLASSES:
            raise ValueError(f'unknown synthetic category {name!r}; '
                             f'choose from {", ".join(SYNTHETIC_CLASSES)}')
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError('categories must not be empty')
    return tuple(out)


def _normalize_object_sizes(h: int, w: int, min_object_size,
                            max_object_size) -> Tuple[float, float]:
    if max_object_size is None:
        max_object_size = 0.5 * min(h, w)
    min_object_size, max_object_size = float(min_object_size), float(max_object_size)
    if not 3 <= min_object_size <= max_object_size:
        raise ValueError('need 3 <= min_object_size <= max_object_size, got '
                         f'{min_object_size}, {max_object_size}')
    return min_object_size, max_object_size


def _normalize_format(image_format: str) -> str:
    fmt = str(image_format).lower().lstrip('.')
    if fmt == 'jpeg':
        fmt = 'jpg'
    if fmt not in ('png', 'jpg'):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    return fmt


def _normalize_style(style: str) -> str:
    if style not in STYLES:
        raise ValueError(f'style must be one of {", ".join(STYLES)}, got {style!r}')
    return str(style)


def normalize_args(num_train, num_val, image_size, categories, seed, min_objects, max_objects,
                   min_object_size, max_object_size, image_format, num_calib=0,
                   style='default') -> dict:
    """The validated argument dict (ValueError naming the bad argument otherwise)."""
    h, w = _normalize_size(image_size)
    num_train, num_val, num_calib = int(num_train), int(num_val), int(num_calib)
    if num_train < 0 or num_val < 0 or num_calib < 0:
        raise ValueError('num_train, num_val and num_calib must be >= 0')
    seed = int(seed)
    if seed < 0:
        raise ValueError('seed must be a non-negative integer')
    min_objects, max_objects = int(min_objects), int(max_objects)
    if min_objects < 0 or max_objects < min_objects:
        raise ValueError(f'need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}')
    min_object_size, max_object_size = _normalize_object_sizes(h, w, min_object_size,
                                                               max_object_size)
    fmt = _normalize_format(image_format)
    style = _normalize_style(style)
    args = dict(
        generator_version=GENERATOR_VERSION,
        num_train=num_train,
        num_val=num_val,
        image_size=[h, w],
        categories=list(_normalize_categories(categories)),
        seed=seed,
        min_objects=min_objects,
        max_objects=max_objects,
        min_object_size=min_object_size,
        max_object_size=max_object_size,
        image_format=fmt,
    )
    if num_calib:  # only when asked for: sets generated without it stay valid
        args['num_calib'] = num_calib
    if style != 'default':  # likewise: default sets keep their meta.json
        args['style'] = style
    return args


def splits_of(args: dict) -> Tuple[str, ...]:
    """The splits a set generated with ``args`` has."""
    return tuple(s for s in SPLITS if args.get(f'num_{s}', 0) or s != 'calib')
