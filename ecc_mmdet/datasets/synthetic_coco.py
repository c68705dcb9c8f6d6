"""Deterministic synthetic COCO-format detection dataset ("shapes on clutter").

A small, CPU-friendly detection problem for demos and tests that is *not* trivially separable:

* six shape categories (:data:`SYNTHETIC_CLASSES`), each randomly rotated and scaled from ~8 px up
  to half the image side;
* colour and texture (solid, stripes, checker, noise, gradient) are drawn independently of the
  category, so only the geometry tells the classes apart;
* later shapes are drawn over earlier ones (partial occlusion) and thin clutter can cross shapes;
  every box is the bounding box of the *visible* pixels of its shape, ``area`` is the visible pixel
  count, and instances whose visible fraction is below :data:`MIN_VISIBLE_FRACTION` or whose
  visible box is narrower/shorter than :data:`MIN_BOX_SIZE` px are not annotated;
* unannotated clutter (lines, squiggles, arcs, elongated ellipses, amoeba blobs, dots, dashes) on
  non-flat backgrounds (gradients, low-frequency noise, faint textures), plus sensor noise and blur.

Everything is a pure function of ``(seed, split, index)``: image ``i`` of a split is the same
whatever the number of images asked for, and two runs with the same arguments give byte-identical
annotation files and identical pixels.

Layout written by :func:`generate_synthetic_coco`::

    out_dir/
        train/000000.png ...
        val/000000.png ...
        annotations/instances_train.json
        annotations/instances_val.json
        meta.json            # generation arguments; written last

The annotation files and ``meta.json`` are written through a temporary file and renamed, and they
are deleted before any image is (re)written, so an interrupted run is always detected by
:func:`ensure_synthetic_coco`, which regenerates only when the set is missing, incomplete or was
generated with other arguments.

This module depends on numpy and OpenCV only (no torch, no mmdet) so it can be used from tools and
tests without the full detection stack.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

__all__ = [
    'SYNTHETIC_CLASSES', 'GENERATOR_VERSION', 'render_synthetic_image',
    'generate_synthetic_coco', 'ensure_synthetic_coco', 'main'
]

#: The shape categories, in their canonical order.
SYNTHETIC_CLASSES: Tuple[str, ...] = ('circle', 'rectangle', 'triangle', 'star', 'ring', 'cross')

#: Bumped whenever the rendering changes, so :func:`ensure_synthetic_coco` regenerates old sets.
GENERATOR_VERSION = 1

#: ``calib``: optional held-out images (``num_calib``) that no model trains or is scored on, for
#: calibrating and fitting routers (dynamic inference)
SPLITS = ('train', 'val', 'calib')
_SPLIT_IDS = {'train': 0, 'val': 1, 'calib': 2}
_SEED_TAG = 0x5EED_C0C0

#: An instance is annotated only if at least this fraction of its full shape is visible ...
MIN_VISIBLE_FRACTION = 0.3
#: ... and its visible box is at least this many pixels wide and high.
MIN_BOX_SIZE = 4
#: Default smallest object size (diameter of the circumscribed circle, px).
DEFAULT_MIN_OBJECT_SIZE = 8.0
JPEG_QUALITY = 95
TEXTURES = ('solid', 'stripes', 'checker', 'noise', 'gradient')

_IMAGE_NAME_RE = re.compile(r'^\d{6}\.(png|jpg)$')
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_SCALE = float(1 << _SHIFT)

ImageSize = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# argument normalisation
# --------------------------------------------------------------------------------------------
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


def _normalize_args(num_train, num_val, image_size, categories, seed, min_objects, max_objects,
                    min_object_size, max_object_size, image_format, num_calib=0) -> dict:
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
    if max_object_size is None:
        max_object_size = 0.5 * min(h, w)
    min_object_size, max_object_size = float(min_object_size), float(max_object_size)
    if not 3 <= min_object_size <= max_object_size:
        raise ValueError('need 3 <= min_object_size <= max_object_size, got '
                         f'{min_object_size}, {max_object_size}')
    fmt = str(image_format).lower().lstrip('.')
    if fmt == 'jpeg':
        fmt = 'jpg'
    if fmt not in ('png', 'jpg'):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
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
    return args


def _splits(args: dict):
    """The splits a set generated with ``args`` has."""
    return tuple(s for s in SPLITS if args.get(f'num_{s}', 0) or s != 'calib')


# --------------------------------------------------------------------------------------------
# rendering helpers
# --------------------------------------------------------------------------------------------
def _random_color(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.15:  # some grey-ish objects
        return np.full(3, rng.uniform(0, 255), np.float32)
    return rng.uniform(0, 255, 3).astype(np.float32)


def _rotate(points: np.ndarray, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return points @ np.array([[c, s], [-s, c]], np.float64)


def _ellipse_points(rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _shape_polygons(name: str, rng: np.random.Generator,
                    size: float) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Outer contours and holes of a shape centred at the origin (size = circumscribed diameter)."""
    r = size / 2.0
    theta = rng.uniform(0, 2 * np.pi)
    holes: List[np.ndarray] = []
    if name == 'circle':
        outer = _ellipse_points(r, r * rng.uniform(0.85, 1.0))
    elif name == 'ring':
        outer = _ellipse_points(r, r * rng.uniform(0.9, 1.0))
        hole = r * rng.uniform(0.45, 0.7)
        holes = [_rotate(_ellipse_points(hole, hole * rng.uniform(0.9, 1.0)), theta)]
    elif name == 'rectangle':
        alpha = math.atan(rng.uniform(0.35, 1.0))
        hw, hh = r * math.cos(alpha), r * math.sin(alpha)
        outer = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]], np.float64)
    elif name == 'triangle':
        angles = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-15, 15, 3))
        radii = r * rng.uniform(0.85, 1.0, 3)
        outer = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    elif name == 'star':
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * inner)
        outer = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    elif name == 'cross':
        a = r * rng.uniform(0.2, 0.34)  # half arm thickness
        b = math.sqrt(max(r * r - a * a, 1e-6))  # arm length so the tips touch the circle
        outer = np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                          [-a, a], [-b, a], [-b, -a], [-a, -a]], np.float64)
    else:  # pragma: no cover - guarded by _normalize_categories
        raise ValueError(name)
    return [_rotate(outer, theta)], holes


def _fill(mask: np.ndarray, polys: List[np.ndarray], center: Tuple[float, float],
          value: int) -> None:
    pts = [np.round((p + np.asarray(center)) * _SCALE).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def _texture(rng: np.random.Generator, hh: int, ww: int, c1: np.ndarray) -> np.ndarray:
    """An (hh, ww, 3) float32 texture whose main colour is c1."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    if kind == 'solid':
        return np.broadcast_to(c1, (hh, ww, 3)).astype(np.float32)
    if kind == 'noise':
        sigma = rng.uniform(12, 40)
        noise = rng.normal(0, sigma, (hh, ww, 1 if rng.random() < 0.5 else 3))
        return (c1 + noise).astype(np.float32)
    if rng.random() < 0.5:
        c2 = _random_color(rng)
    else:
        c2 = np.clip(c1 * rng.uniform(0.3, 0.7) + rng.uniform(0, 1) * 255 * 0.3, 0, 255)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    phi = rng.uniform(0, np.pi)
    u = xx * math.cos(phi) + yy * math.sin(phi)
    if kind == 'stripes':
        period = rng.uniform(2.0, 4.0)
        t = (np.floor(u / period) % 2)[..., None]
    elif kind == 'checker':
        cell = rng.uniform(2.0, 5.0)
        v = -xx * math.sin(phi) + yy * math.cos(phi)
        t = ((np.floor(u / cell) + np.floor(v / cell)) % 2)[..., None]
    else:  # gradient
        span = max(u.max() - u.min(), 1.0)
        t = ((u - u.min()) / span)[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # linear gradient between two colours
        c1, c2 = _random_color(rng), _random_color(rng)
        phi = rng.uniform(0, 2 * np.pi)
        u = xx * math.cos(phi) + yy * math.sin(phi)
        t = ((u - u.min()) / max(u.max() - u.min(), 1.0))[..., None]
        bg = c1 * (1 - t) + c2 * t
    else:  # low-frequency colour noise
        gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
        grid = rng.uniform(0, 255, (gh, gw, 3)).astype(np.float32)
        bg = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    # low-frequency luminance modulation
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    lum = cv2.resize(rng.normal(0, 1, (gh, gw)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    bg = bg + rng.uniform(5, 30) * lum[..., None]
    r = rng.random()
    if r < 0.2:  # faint stripes
        phi = rng.uniform(0, np.pi)
        u = xx * math.cos(phi) + yy * math.sin(phi)
        bg = bg + rng.uniform(6, 20) * np.sin(2 * np.pi * u / rng.uniform(4, 16))[..., None]
    elif r < 0.35:  # faint checker
        cell = rng.uniform(4, 16)
        t = (np.floor(xx / cell) + np.floor(yy / cell)) % 2
        bg = bg + rng.uniform(6, 20) * (t - 0.5)[..., None]
    elif r < 0.55:  # grainy texture
        grain = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 0.8)
        bg = bg + rng.uniform(8, 25) * grain[..., None]
    return np.clip(bg, 0, 255).astype(np.float32)


def _clutter_mask(rng: np.random.Generator, h: int, w: int,
                  small_only: bool) -> Tuple[np.ndarray, bool]:
    """A uint8 (0..255, anti-aliased) mask of one piece of clutter that is none of the classes.

    The flag tells whether it is a filled area (which may then get a texture, like the objects).
    """
    m = np.zeros((h, w), np.uint8)
    side = min(h, w)
    kinds = ('line', 'dot', 'dash') if small_only else (
        'line', 'line', 'squiggle', 'arc', 'ellipse', 'blob', 'dot', 'dash')
    kind = kinds[int(rng.integers(len(kinds)))]
    thick = int(rng.integers(1, 3))

    def pt():
        return (int(rng.integers(-4, w + 4)) * 16, int(rng.integers(-4, h + 4)) * 16)

    if kind == 'line':
        cv2.line(m, pt(), pt(), 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == 'squiggle':
        n = int(rng.integers(4, 9))
        start = rng.uniform(0, [w, h])
        steps = rng.normal(0, side * 0.08, (n, 2))
        pts = np.round((start + np.cumsum(steps, 0)) * _SCALE).astype(np.int32)
        cv2.polylines(m, [pts], False, 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == 'arc':  # open arc (< 200 deg) so it never reads as a ring
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        ax = int(rng.uniform(4, side * 0.3))
        start = rng.uniform(0, 360)
        cv2.ellipse(m, c, (ax, int(ax * rng.uniform(0.5, 1.0))), rng.uniform(0, 180), start,
                    start + rng.uniform(40, 200), 255, thick, cv2.LINE_AA)
    elif kind == 'ellipse':  # elongated filled ellipse (aspect >= 2.5)
        rx = rng.uniform(3, side * 0.15)
        poly = _rotate(_ellipse_points(rx, rx / rng.uniform(2.5, 5.0), 32), rng.uniform(0, np.pi))
        _fill(m, [poly], tuple(rng.uniform(0, [w, h])), 255)
    elif kind == 'blob':  # amoeba: strongly non-circular smooth outline
        rad = rng.uniform(3, side * 0.12)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rr = np.ones_like(t)
        for k in (2, 3, 4):
            rr += rng.uniform(0.15, 0.3) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        rr = rad * np.clip(rr, 0.25, None)
        poly = np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1)
        _fill(m, [poly], tuple(rng.uniform(0, [w, h])), 255)
    elif kind == 'dot':
        c = (int(rng.integers(0, w)) * 16, int(rng.integers(0, h)) * 16)
        cv2.circle(m, c, int(rng.uniform(0.6, 1.3) * 16), 255, -1, cv2.LINE_AA, _SHIFT)
    else:  # dash
        x, y = rng.uniform(0, [w, h])
        ang, ln = rng.uniform(0, np.pi), rng.uniform(3, 7)
        p1 = (int(x * 16), int(y * 16))
        p2 = (int((x + ln * math.cos(ang)) * 16), int((y + ln * math.sin(ang)) * 16))
        cv2.line(m, p1, p2, 255, thick, cv2.LINE_AA, _SHIFT)
    return m, kind in ('ellipse', 'blob')


def _draw_clutter(rng, img, owner, n, small_only):
    h, w = img.shape[:2]
    for _ in range(n):
        m, filled = _clutter_mask(rng, h, w, small_only)
        a = (m.astype(np.float32) / 255.0)[..., None]
        color = _random_color(rng)
        if filled and rng.random() < 0.5:  # textured like the objects, so texture is no cue
            color = _texture(rng, h, w, color)
        img *= 1 - a
        img += a * color
        if owner is not None:
            owner[m > 127] = -1


def _render(rng: np.random.Generator, h: int, w: int, categories: Sequence[str], min_objects: int,
            max_objects: int, min_size: float, max_size: float):
    """Render one image; returns (uint8 HxWx3 image, annotations, owner map)."""
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)
    _draw_clutter(rng, img, None, int(rng.integers(2, 9)), small_only=False)

    n_obj = int(rng.integers(min_objects, max_objects + 1))
    shapes = []  # (category index, full area)
    log_lo, log_hi = math.log(min_size), math.log(max_size)
    for k in range(n_obj):
        cat = int(rng.integers(len(categories)))
        size = math.exp(rng.uniform(log_lo, log_hi))
        cx = rng.uniform(0, w)  # centre inside the image; shapes may still be cut off
        cy = rng.uniform(0, h)
        outer, holes = _shape_polygons(categories[cat], rng, size)
        pad = int(math.ceil(size / 2)) + 2
        ox, oy = int(math.floor(cx)) - pad, int(math.floor(cy)) - pad
        ps = 2 * pad + 1
        patch = np.zeros((ps, ps), np.uint8)
        local = (cx - ox, cy - oy)
        _fill(patch, outer, local, 1)
        if holes:
            _fill(patch, holes, local, 0)
        full_area = int(patch.sum())
        shapes.append((cat, full_area))
        x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + ps, w), min(oy + ps, h)
        if full_area == 0 or x0 >= x1 or y0 >= y1:
            continue
        pm = patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(bool)
        if not pm.any():
            continue
        region = img[y0:y1, x0:x1]
        bg_mean = region[pm].mean(0)
        tex = None
        for _ in range(8):  # keep the object distinguishable from what lies under it
            tex = _texture(rng, y1 - y0, x1 - x0, _random_color(rng))
            if np.linalg.norm(tex[pm].mean(0) - bg_mean) >= 60:
                break
        region[pm] = tex[pm]
        owner[y0:y1, x0:x1][pm] = k

    _draw_clutter(rng, img, owner, int(rng.integers(0, 4)), small_only=True)

    # sensor effects
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.8))
    img += rng.normal(0, rng.uniform(0, 6), img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    anns = []
    for k, (cat, full_area) in enumerate(shapes):
        if full_area == 0:
            continue
        ys, xs = np.nonzero(owner == k)
        visible = int(xs.size)
        if visible == 0 or visible < MIN_VISIBLE_FRACTION * full_area:
            continue
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        if x1 - x0 < MIN_BOX_SIZE or y1 - y0 < MIN_BOX_SIZE:
            continue
        anns.append(dict(category=categories[cat], category_index=cat, bbox=[x0, y0, x1 - x0,
                                                                              y1 - y0],
                         area=visible, instance=k, visible_fraction=visible / full_area))
    return image, anns, owner


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([_SEED_TAG, int(seed), _SPLIT_IDS[split], int(index)])


def render_synthetic_image(seed: int = 0,
                           split: str = 'train',
                           index: int = 0,
                           image_size: ImageSize = 128,
                           categories: Optional[Sequence[str]] = None,
                           min_objects: int = 1,
                           max_objects: int = 6,
                           min_object_size: float = DEFAULT_MIN_OBJECT_SIZE,
                           max_object_size: Optional[float] = None,
                           return_masks: bool = False):
    """Render image ``index`` of ``split`` exactly as :func:`generate_synthetic_coco` does.

    Returns ``(image, annotations)`` where ``image`` is an HxWx3 uint8 array (OpenCV BGR order)
    and each annotation is a dict with ``category`` (name), ``category_index`` (into
    ``categories``), ``bbox`` ([x, y, w, h] of the visible pixels), ``area`` (visible pixel count)
    and ``visible_fraction``. With ``return_masks=True`` a third element is a list of boolean HxW
    visible masks, one per annotation.
    """
    if split not in _SPLIT_IDS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    a = _normalize_args(0, 0, image_size, categories, seed, min_objects, max_objects,
                        min_object_size, max_object_size, 'png')
    h, w = a['image_size']
    image, anns, owner = _render(_image_rng(a['seed'], split, index), h, w, a['categories'],
                                 a['min_objects'], a['max_objects'], a['min_object_size'],
                                 a['max_object_size'])
    if return_masks:
        masks = [owner == ann['instance'] for ann in anns]
        return image, anns, masks
    return image, anns


# --------------------------------------------------------------------------------------------
# dataset files
# --------------------------------------------------------------------------------------------
def _paths(out_dir: Path) -> dict:
    return dict(
        img_dirs={s: out_dir / s for s in SPLITS},
        ann_files={s: out_dir / 'annotations' / f'instances_{s}.json' for s in SPLITS},
        meta=out_dir / 'meta.json',
    )


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _dump_json(obj) -> str:
    return json.dumps(obj, indent=None, separators=(',', ':'), ensure_ascii=True) + '\n'


def _encode_image(image: np.ndarray, fmt: str) -> bytes:
    if fmt == 'png':
        ok, buf = cv2.imencode('.png', image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover
        raise RuntimeError(f'could not encode image as {fmt}')
    return buf.tobytes()


def _summary(out_dir: Path, args: dict, counts: dict, generated: bool, seconds: float) -> dict:
    p = _paths(out_dir)
    return dict(
        out_dir=str(out_dir),
        ann_files={s: str(v) for s, v in p['ann_files'].items() if s in _splits(args)},
        img_dirs={s: str(v) for s, v in p['img_dirs'].items() if s in _splits(args)},
        meta_file=str(p['meta']),
        categories=list(args['categories']),
        image_size=tuple(args['image_size']),
        num_images={s: counts[s][0] for s in _splits(args)},
        num_annotations={s: counts[s][1] for s in _splits(args)},
        generated=generated,
        seconds=seconds,
        args=dict(args),
    )


def _generate(out_dir: Path, args: dict, progress: bool) -> dict:
    t0 = time.perf_counter()
    p = _paths(out_dir)
    # invalidate first: an interrupted run then leaves no annotation files / meta behind
    for f in [p['meta'], *p['ann_files'].values()]:
        if f.exists():
            f.unlink()
    h, w = args['image_size']
    cats = args['categories']
    fmt = args['image_format']
    coco_cats = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(cats)]
    counts = {}
    total = sum(args.get(f'num_{s}', 0) for s in SPLITS)
    done = 0
    step = max(1, total // 10)
    for split in _splits(args):
        n = args[f'num_{split}']
        img_dir = p['img_dirs'][split]
        img_dir.mkdir(parents=True, exist_ok=True)
        for f in img_dir.iterdir():  # stale images of an earlier run (only our own names)
            if _IMAGE_NAME_RE.match(f.name) and f.is_file():
                f.unlink()
        images, annotations = [], []
        for i in range(n):
            image, anns, _ = _render(_image_rng(args['seed'], split, i), h, w, cats,
                                     args['min_objects'], args['max_objects'],
                                     args['min_object_size'], args['max_object_size'])
            name = f'{i:06d}.{fmt}'
            (img_dir / name).write_bytes(_encode_image(image, fmt))
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for a in anns:
                annotations.append(
                    dict(id=len(annotations) + 1,
                         image_id=i + 1,
                         category_id=a['category_index'] + 1,
                         bbox=[float(v) for v in a['bbox']],
                         area=float(a['area']),
                         iscrowd=0))
            done += 1
            if progress and (done % step == 0 or done == total):
                print(f'[synthetic_coco] {done}/{total} images ({split})', file=sys.stderr,
                      flush=True)
        coco = dict(
            info=dict(description=f'ecc_mmdet synthetic shapes ({split})',
                      version=str(GENERATOR_VERSION),
                      seed=args['seed']),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=coco_cats,
        )
        counts[split] = (len(images), len(annotations))
        _atomic_write_text(p['ann_files'][split], _dump_json(coco))
    _atomic_write_text(p['meta'], json.dumps(args, indent=2, sort_keys=True) + '\n')
    return _summary(out_dir, args, counts, True, time.perf_counter() - t0)


def generate_synthetic_coco(out_dir: Union[str, os.PathLike],
                            num_train: int = 400,
                            num_val: int = 100,
                            image_size: ImageSize = 128,
                            categories: Optional[Sequence[str]] = None,
                            seed: int = 0,
                            min_objects: int = 1,
                            max_objects: int = 6,
                            image_format: str = 'png',
                            progress: bool = True,
                            min_object_size: float = DEFAULT_MIN_OBJECT_SIZE,
                            max_object_size: Optional[float] = None,
                            num_calib: int = 0) -> dict:
    """(Re)generate the synthetic COCO-format dataset under ``out_dir`` unconditionally.

    Args:
        out_dir: root folder; ``train/``, ``val/``, ``annotations/`` and ``meta.json`` go there.
        num_train, num_val: number of images per split.
        num_calib: images of an extra held-out ``calib`` split (0: none), for calibrating and
            fitting routers on images no model was trained or is evaluated on.
        image_size: ``int`` (square) or ``(H, W)``.
        categories: subset of :data:`SYNTHETIC_CLASSES` (their order gives category ids 1..n);
            ``None`` means all.
        seed: non-negative integer; image ``i`` of a split depends only on
            ``(seed, split, i)`` and the other rendering arguments.
        min_objects, max_objects: number of shapes drawn per image (inclusive range). Shapes that
            end up mostly hidden or cut off are drawn but not annotated.
        image_format: ``'png'`` (lossless) or ``'jpg'``.
        progress: print progress lines to stderr.
        min_object_size, max_object_size: range (px) of the shapes' circumscribed diameter,
            sampled log-uniformly; ``max_object_size`` defaults to half the shorter image side.

    Returns:
        dict with ``out_dir``, ``ann_files``/``img_dirs`` (per split), ``meta_file``,
        ``categories``, ``image_size``, ``num_images``/``num_annotations`` (per split),
        ``generated`` (True), ``seconds`` and the normalised ``args``.
    """
    args = _normalize_args(num_train, num_val, image_size, categories, seed, min_objects,
                           max_objects, min_object_size, max_object_size, image_format, num_calib)
    return _generate(Path(out_dir), args, progress)


def _existing_summary(out_dir: Path, args: dict) -> Optional[dict]:
    """Summary of a complete set generated with ``args``, or None if it must be regenerated."""
    p = _paths(out_dir)
    try:
        meta = json.loads(p['meta'].read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    if meta != json.loads(json.dumps(args)):
        return None
    counts = {}
    for split in _splits(args):
        try:
            coco = json.loads(p['ann_files'][split].read_text(encoding='utf-8'))
        except (OSError, ValueError):
            return None
        images = coco.get('images', [])
        if len(images) != args[f'num_{split}']:
            return None
        img_dir = p['img_dirs'][split]
        if any(not (img_dir / im['file_name']).is_file() for im in images):
            return None
        counts[split] = (len(images), len(coco.get('annotations', [])))
    return _summary(out_dir, args, counts, False, 0.0)


def ensure_synthetic_coco(out_dir: Union[str, os.PathLike],
                          num_train: int = 400,
                          num_val: int = 100,
                          image_size: ImageSize = 128,
                          categories: Optional[Sequence[str]] = None,
                          seed: int = 0,
                          min_objects: int = 1,
                          max_objects: int = 6,
                          image_format: str = 'png',
                          progress: bool = True,
                          min_object_size: float = DEFAULT_MIN_OBJECT_SIZE,
                          max_object_size: Optional[float] = None,
                          force: bool = False, num_calib: int = 0) -> dict:
    """Like :func:`generate_synthetic_coco`, but reuse an existing complete set.

    Nothing is written when ``meta.json`` records the same (normalised) arguments and generator
    version, both annotation files parse and every image they list exists; otherwise (or with
    ``force=True``) the set is regenerated. The summary's ``generated`` tells which happened.
    """
    args = _normalize_args(num_train, num_val, image_size, categories, seed, min_objects,
                           max_objects, min_object_size, max_object_size, image_format, num_calib)
    out = Path(out_dir)
    if not force:
        summary = _existing_summary(out, args)
        if summary is not None:
            if progress:
                print(f'[synthetic_coco] reusing existing dataset in {out}', file=sys.stderr,
                      flush=True)
            return summary
    return _generate(out, args, progress)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='make_synthetic_coco',
        description='Generate a deterministic synthetic COCO-format detection dataset '
        '(rotated, textured, occluded shapes on cluttered backgrounds).')
    parser.add_argument('--out', default='data/synthetic_coco', help='output folder')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--num-calib', type=int, default=400,
                        help='held-out images for router calibration (calib split; 0: none)')
    parser.add_argument('--image-size', type=int, nargs='+', default=[128], metavar='N',
                        help='one value (square) or H W')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--categories', nargs='+', choices=SYNTHETIC_CLASSES, default=None,
                        help='subset of the shape classes (default: all)')
    parser.add_argument('--min-objects', type=int, default=1)
    parser.add_argument('--max-objects', type=int, default=6)
    parser.add_argument('--min-object-size', type=float, default=DEFAULT_MIN_OBJECT_SIZE)
    parser.add_argument('--max-object-size', type=float, default=None,
                        help='default: half the shorter image side')
    parser.add_argument('--format', choices=('png', 'jpg'), default='png')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if a matching dataset exists')
    parser.add_argument('--quiet', action='store_true', help='no progress lines')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    a = _parse_args(argv)
    try:
        summary = ensure_synthetic_coco(
            a.out,
            num_train=a.num_train,
            num_val=a.num_val,
            num_calib=a.num_calib,
            image_size=a.image_size,
            categories=a.categories,
            seed=a.seed,
            min_objects=a.min_objects,
            max_objects=a.max_objects,
            image_format=a.format,
            progress=not a.quiet,
            min_object_size=a.min_object_size,
            max_object_size=a.max_object_size,
            force=a.force)
    except ValueError as e:
        print(f'make_synthetic_coco: error: {e}', file=sys.stderr)
        return 2
    h, w = summary['image_size']
    state = (f'generated in {summary["seconds"]:.2f} s'
             if summary['generated'] else 'already up to date (reused)')
    print(f'synthetic COCO dataset in {summary["out_dir"]}: {state}')
    print(f'  image size {h}x{w}, categories: {", ".join(summary["categories"])}')
    for s in summary['num_images']:
        print(f'  {s:5s}: {summary["num_images"][s]:6d} images, '
              f'{summary["num_annotations"][s]:6d} boxes -> {summary["ann_files"][s]}')
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
