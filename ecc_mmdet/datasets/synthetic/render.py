"""Rendering of the synthetic "shapes on clutter" images and their visible-pixel annotations.

The problem is small and CPU-friendly but *not* trivially separable:

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

That is the ``default`` style, the one models train on. The ``shifted`` style (:data:`STYLES`) is a
second domain for testing them on data unlike their training set; nothing is trained or tuned on
it. It keeps the classes, the object layout and sizes and the annotation rules, and changes the
rest, every choice drawn per image:

* object textures from :data:`SHIFTED_TEXTURES` (polka dots, concentric bands, cross-hatching,
  warped-sinusoid "marble"), still independent of the category;
* backgrounds of multi-octave value noise or bricks/tiles, under a colour cast and vignetting;
* denser clutter (6-14 pieces under the objects, 1-5 small ones over them) of other kinds:
  zig-zags, thin spirals, hatch patches, short parallel strokes (plus lines, dots, dashes and
  amoeba blobs); none is a closed ring, a cross of two bars or a polygon with 3, 4 or 10 corners;
* stronger sensor noise (sigma up to 10), sometimes a short horizontal/vertical motion blur, and a
  gamma change.

Everything is a pure function of ``(seed, split, index)`` and the arguments (a non-default style
has its own random stream): image ``i`` of a split is the same whatever the number of images asked
for. The order of the random draws is part of the output: changing it changes every image (bump
:data:`GENERATOR_VERSION`).
"""
from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from .spec import (DEFAULT_MIN_OBJECT_SIZE, MIN_BOX_SIZE, MIN_VISIBLE_FRACTION, SPLIT_IDS,
                   SPLITS, STYLES, ImageSize, normalize_args)

__all__ = ['render_synthetic_image', 'render', 'image_rng', 'TEXTURES', 'SHIFTED_TEXTURES']

TEXTURES = ('solid', 'stripes', 'checker', 'noise', 'gradient')
#: the object textures of the ``shifted`` style (none of them is one of :data:`TEXTURES`)
SHIFTED_TEXTURES = ('dots', 'rings', 'crosshatch', 'marble')
_SEED_TAG = 0x5EED_C0C0
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_SCALE = float(1 << _SHIFT)


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
    else:  # pragma: no cover - guarded by the category normalisation
        raise ValueError(name)
    return [_rotate(outer, theta)], holes


def _fill(mask: np.ndarray, polys: List[np.ndarray], center: Tuple[float, float],
          value: int) -> None:
    pts = [np.round((p + np.asarray(center)) * _SCALE).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def _second_color(rng: np.random.Generator, c1: np.ndarray) -> np.ndarray:
    """The other colour of a two-colour texture: random, or a darker/lighter c1."""
    if rng.random() < 0.5:
        return _random_color(rng)
    return np.clip(c1 * rng.uniform(0.3, 0.7) + rng.uniform(0, 1) * 255 * 0.3, 0, 255)


def _texture(rng: np.random.Generator, hh: int, ww: int, c1: np.ndarray) -> np.ndarray:
    """An (hh, ww, 3) float32 texture whose main colour is c1."""
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    if kind == 'solid':
        return np.broadcast_to(c1, (hh, ww, 3)).astype(np.float32)
    if kind == 'noise':
        sigma = rng.uniform(12, 40)
        noise = rng.normal(0, sigma, (hh, ww, 1 if rng.random() < 0.5 else 3))
        return (c1 + noise).astype(np.float32)
    c2 = _second_color(rng, c1)
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


# clutter: each drawer paints one piece into the uint8 mask m (anti-aliased, 0..255)
def _clutter_line(rng, m, h, w, thick):
    def pt():
        return (int(rng.integers(-4, w + 4)) * 16, int(rng.integers(-4, h + 4)) * 16)

    cv2.line(m, pt(), pt(), 255, thick, cv2.LINE_AA, _SHIFT)


def _clutter_squiggle(rng, m, h, w, thick):
    n = int(rng.integers(4, 9))
    start = rng.uniform(0, [w, h])
    steps = rng.normal(0, min(h, w) * 0.08, (n, 2))
    pts = np.round((start + np.cumsum(steps, 0)) * _SCALE).astype(np.int32)
    cv2.polylines(m, [pts], False, 255, thick, cv2.LINE_AA, _SHIFT)


def _clutter_arc(rng, m, h, w, thick):  # open arc (< 200 deg) so it never reads as a ring
    c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    ax = int(rng.uniform(4, min(h, w) * 0.3))
    start = rng.uniform(0, 360)
    cv2.ellipse(m, c, (ax, int(ax * rng.uniform(0.5, 1.0))), rng.uniform(0, 180), start,
                start + rng.uniform(40, 200), 255, thick, cv2.LINE_AA)


def _clutter_ellipse(rng, m, h, w, thick):  # elongated filled ellipse (aspect >= 2.5)
    rx = rng.uniform(3, max(3.0, min(h, w) * 0.15))  # max: empty range below 20 px
    poly = _rotate(_ellipse_points(rx, rx / rng.uniform(2.5, 5.0), 32), rng.uniform(0, np.pi))
    _fill(m, [poly], tuple(rng.uniform(0, [w, h])), 255)


def _clutter_blob(rng, m, h, w, thick):  # amoeba: strongly non-circular smooth outline
    rad = rng.uniform(3, max(3.0, min(h, w) * 0.12))  # max: empty range below 25 px
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    rr = np.ones_like(t)
    for k in (2, 3, 4):
        rr += rng.uniform(0.15, 0.3) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rr = rad * np.clip(rr, 0.25, None)
    poly = np.stack([rr * np.cos(t), rr * np.sin(t)], axis=1)
    _fill(m, [poly], tuple(rng.uniform(0, [w, h])), 255)


def _clutter_dot(rng, m, h, w, thick):
    c = (int(rng.integers(0, w)) * 16, int(rng.integers(0, h)) * 16)
    cv2.circle(m, c, int(rng.uniform(0.6, 1.3) * 16), 255, -1, cv2.LINE_AA, _SHIFT)


def _clutter_dash(rng, m, h, w, thick):
    x, y = rng.uniform(0, [w, h])
    ang, ln = rng.uniform(0, np.pi), rng.uniform(3, 7)
    p1 = (int(x * 16), int(y * 16))
    p2 = (int((x + ln * math.cos(ang)) * 16), int((y + ln * math.sin(ang)) * 16))
    cv2.line(m, p1, p2, 255, thick, cv2.LINE_AA, _SHIFT)


_CLUTTER = dict(line=_clutter_line, squiggle=_clutter_squiggle, arc=_clutter_arc,
                ellipse=_clutter_ellipse, blob=_clutter_blob, dot=_clutter_dot,
                dash=_clutter_dash)
_SMALL_CLUTTER = ('line', 'dot', 'dash')
_ANY_CLUTTER = ('line', 'line', 'squiggle', 'arc', 'ellipse', 'blob', 'dot', 'dash')


def _clutter_mask(rng: np.random.Generator, h: int, w: int,
                  kinds: Sequence[str]) -> Tuple[np.ndarray, bool]:
    """A uint8 (0..255, anti-aliased) mask of one piece of clutter that is none of the classes.

    The flag tells whether it is a filled area (which may then get a texture, like the objects).
    """
    m = np.zeros((h, w), np.uint8)
    kind = kinds[int(rng.integers(len(kinds)))]
    thick = int(rng.integers(1, 3))
    _CLUTTER[kind](rng, m, h, w, thick)
    return m, kind in ('ellipse', 'blob')


def _draw_clutter(rng, img, owner, n, kinds, texture):
    h, w = img.shape[:2]
    for _ in range(n):
        m, filled = _clutter_mask(rng, h, w, kinds)
        a = (m.astype(np.float32) / 255.0)[..., None]
        color = _random_color(rng)
        if filled and rng.random() < 0.5:  # textured like the objects, so texture is no cue
            color = texture(rng, h, w, color)
        img *= 1 - a
        img += a * color
        if owner is not None:
            owner[m > 127] = -1


def _draw_shape(rng, img, owner, k: int, name: str, size: float, texture) -> int:
    """Draw shape ``k`` over ``img`` (and mark its pixels in ``owner``); returns its full area."""
    h, w = owner.shape
    cx = rng.uniform(0, w)  # centre inside the image; shapes may still be cut off
    cy = rng.uniform(0, h)
    outer, holes = _shape_polygons(name, rng, size)
    pad = int(math.ceil(size / 2)) + 2
    ox, oy = int(math.floor(cx)) - pad, int(math.floor(cy)) - pad
    ps = 2 * pad + 1
    patch = np.zeros((ps, ps), np.uint8)
    local = (cx - ox, cy - oy)
    _fill(patch, outer, local, 1)
    if holes:
        _fill(patch, holes, local, 0)
    full_area = int(patch.sum())
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + ps, w), min(oy + ps, h)
    if full_area == 0 or x0 >= x1 or y0 >= y1:
        return full_area
    pm = patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox].astype(bool)
    if not pm.any():
        return full_area
    region = img[y0:y1, x0:x1]
    bg_mean = region[pm].mean(0)
    tex = None
    for _ in range(8):  # keep the object distinguishable from what lies under it
        tex = texture(rng, y1 - y0, x1 - x0, _random_color(rng))
        if np.linalg.norm(tex[pm].mean(0) - bg_mean) >= 60:
            break
    region[pm] = tex[pm]
    owner[y0:y1, x0:x1][pm] = k
    return full_area


def _sensor_effects(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur (sometimes) and noise; returns the final uint8 image."""
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.8))
    img += rng.normal(0, rng.uniform(0, 6), img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---- the 'shifted' style: same layout and annotation rules, other appearance -------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) float32 value noise: a cells x cells grid of N(0, 1) values, cubic-interpolated."""
    grid = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _pattern_dots(rng, yy, xx):
    """Polka dots on a rotated square lattice (soft edges)."""
    period = rng.uniform(3.5, 6.0)
    radius = period * rng.uniform(0.22, 0.35)
    phi = rng.uniform(0, np.pi)
    u = xx * math.cos(phi) + yy * math.sin(phi) + rng.uniform(0, period)
    v = -xx * math.sin(phi) + yy * math.cos(phi) + rng.uniform(0, period)
    d = np.hypot(u % period - period / 2, v % period - period / 2)
    return np.clip(radius + 0.5 - d, 0, 1)


def _pattern_rings(rng, yy, xx):
    """Concentric bands around a centre inside the patch (so that they read as curved); narrow,
    so that the inner band does not read as the hole of a ring."""
    cy, cx = rng.uniform(0.1, 0.9, 2) * yy.shape
    period = rng.uniform(2.5, 4.5)
    return np.floor(np.hypot(yy - cy, xx - cx) / period) % 2


def _pattern_crosshatch(rng, yy, xx):
    """Two families of thin parallel lines, 60-120 degrees apart."""
    period, width = rng.uniform(3.0, 6.0), rng.uniform(1.0, 1.8)
    phi = rng.uniform(0, np.pi)
    t = np.zeros(yy.shape, bool)
    for ang in (phi, phi + rng.uniform(np.pi / 3, 2 * np.pi / 3)):
        t |= (xx * math.cos(ang) + yy * math.sin(ang)) % period < width
    return t.astype(np.float32)


def _pattern_marble(rng, yy, xx):
    """A sinusoid along a random direction whose phase is warped by smooth noise."""
    phi = rng.uniform(0, np.pi)
    u = xx * math.cos(phi) + yy * math.sin(phi)
    warp = rng.uniform(4.0, 9.0) * _smooth_noise(rng, *yy.shape, int(rng.integers(2, 5)))
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / rng.uniform(5.0, 12.0) + warp)


_PATTERNS = dict(dots=_pattern_dots, rings=_pattern_rings, crosshatch=_pattern_crosshatch,
                 marble=_pattern_marble)


def _shifted_texture(rng: np.random.Generator, hh: int, ww: int, c1: np.ndarray) -> np.ndarray:
    """Like :func:`_texture` (any category, main colour c1), from :data:`SHIFTED_TEXTURES`."""
    kind = SHIFTED_TEXTURES[int(rng.integers(len(SHIFTED_TEXTURES)))]
    c2 = _second_color(rng, c1)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    t = _PATTERNS[kind](rng, yy, xx)[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-octave value noise (coarse to fine, each octave weaker) between two colours."""
    cells, gain = rng.uniform(2.0, 4.0), rng.uniform(0.45, 0.7)
    t = np.zeros((h, w), np.float32)
    for octave in range(int(rng.integers(3, 6))):
        n = min(max(2, int(round(cells * 2**octave))), max(h, w))
        t += gain**octave * _smooth_noise(rng, h, w, n)
    t = ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]
    c1, c2 = _random_color(rng), _random_color(rng)
    return c1 * (1 - t) + c2 * t


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Running-bond bricks or a square-ish tile grid: mortar joints, bricks of slightly
    different shades (faint, so that no brick stands out like an object)."""
    bh = max(4.0, rng.uniform(0.06, 0.16) * min(h, w))
    bricks = rng.random() < 0.6
    bw = bh * (rng.uniform(1.8, 3.0) if bricks else rng.uniform(1.0, 1.3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy + rng.uniform(0, bh), xx + rng.uniform(0, bw)
    row = np.floor(yy / bh)
    xs = xx + (row % 2) * (0.5 * bw if bricks else 0.0)
    col = np.floor(xs / bw)
    base = _random_color(rng)
    shades = rng.normal(0, rng.uniform(4, 12), (int(row.max()) + 1, int(col.max()) + 1, 3))
    bg = base + shades[row.astype(int), col.astype(int)]
    joint = rng.uniform(0.8, 2.0)
    mortar = (yy % bh < joint) | (xs % bw < joint)
    bg[mortar] = np.clip(base + rng.choice([-1.0, 1.0]) * rng.uniform(25, 60), 0, 255)
    return bg


def _vignette(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) gain falling off quadratically from a centre near the image centre."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (0.5 + rng.uniform(-0.15, 0.15, 2)) * (h, w)
    r2 = ((yy - cy) / (h / 2))**2 + ((xx - cx) / (w / 2))**2
    return np.clip(1 - rng.uniform(0.15, 0.45) * r2 / 2, 0.3, 1)


def _shifted_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Value noise or bricks/tiles, under a colour cast (channel gains) and vignetting."""
    bg = _value_noise(rng, h, w) if rng.random() < 0.6 else _bricks(rng, h, w)
    bg = bg * rng.uniform(0.7, 1.3, 3) * _vignette(rng, h, w)[..., None]
    return np.clip(bg, 0, 255).astype(np.float32)


def _aa_line(m: np.ndarray, p, q, thick: int) -> None:
    p, q = (np.round(np.asarray(v) * _SCALE).astype(int) for v in (p, q))
    cv2.line(m, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 255, thick, cv2.LINE_AA, _SHIFT)


def _clutter_zigzag(rng, m, h, w, thick):  # turns < 90 deg both ways: it never closes or crosses
    n = int(rng.integers(4, 10))
    seg = rng.uniform(3, max(4.0, min(h, w) * 0.08))
    turn = rng.uniform(0.6, 1.2)
    ang = rng.uniform(0, 2 * np.pi) + turn * (-1.0)**np.arange(n)
    steps = seg * np.stack([np.cos(ang), np.sin(ang)], 1)
    pts = rng.uniform(0, [w, h]) + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])
    cv2.polylines(m, [np.round(pts * _SCALE).astype(np.int32)], False, 255, thick, cv2.LINE_AA,
                  _SHIFT)


def _clutter_spiral(rng, m, h, w, thick):
    """A thin open spiral drawn from its centre: no hole and gaps between its turns, so it reads
    neither as a ring nor as a disc (a thick or wide one did look like a ring)."""
    turns, pitch = rng.uniform(1.5, 2.5), rng.uniform(3.0, 4.5)
    t = np.linspace(0, 2 * np.pi * turns, int(24 * turns) + 2)
    r = pitch * t / (2 * np.pi)
    a = (1.0 if rng.random() < 0.5 else -1.0) * t + rng.uniform(0, 2 * np.pi)
    pts = rng.uniform(0, [w, h]) + np.stack([r * np.cos(a), r * np.sin(a)], 1)
    cv2.polylines(m, [np.round(pts * _SCALE).astype(np.int32)], False, 255, 1, cv2.LINE_AA,
                  _SHIFT)


def _clutter_hatch(rng, m, h, w, thick):  # thin parallel lines, ragged ends: no outline to read
    n, gap, ang = int(rng.integers(3, 8)), rng.uniform(3.0, 4.5), rng.uniform(0, np.pi)
    d, nrm = np.array([math.cos(ang), math.sin(ang)]), np.array([-math.sin(ang), math.cos(ang)])
    c = rng.uniform(0, [w, h])
    ends = rng.uniform(0.2, 1.0, (n, 2)) * rng.uniform(4, max(5.0, min(h, w) * 0.1))
    for i, (a, b) in enumerate(ends):
        o = c + (i - (n - 1) / 2) * gap * nrm
        _aa_line(m, o - a * d, o + b * d, 1)


def _clutter_strokes(rng, m, h, w, thick):  # a few short parallel strokes, scattered
    n, ang = int(rng.integers(2, 6)), rng.uniform(0, np.pi)
    d = np.array([math.cos(ang), math.sin(ang)])
    centres = rng.uniform(0, [w, h]) + rng.normal(0, 5, (n, 2))
    for c, half in zip(centres, rng.uniform(1.5, 3.5, n)):
        _aa_line(m, c - half * d, c + half * d, thick)


_CLUTTER.update(zigzag=_clutter_zigzag, spiral=_clutter_spiral, hatch=_clutter_hatch,
                strokes=_clutter_strokes)
_SHIFTED_CLUTTER = ('zigzag', 'zigzag', 'spiral', 'hatch', 'hatch', 'strokes', 'strokes', 'line',
                    'blob', 'blob')
_SHIFTED_SMALL_CLUTTER = ('strokes', 'dot', 'dash')


def _motion_blur(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A 3-5 px horizontal or vertical line kernel (camera shake along one axis)."""
    n = int(rng.integers(3, 6))
    k = np.zeros((n, n), np.float32)
    if rng.random() < 0.5:
        k[n // 2, :] = 1.0 / n
    else:
        k[:, n // 2] = 1.0 / n
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT)


def _shifted_sensor_effects(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Motion blur (sometimes), a gamma change and stronger noise; returns the uint8 image."""
    if rng.random() < 0.3:
        img = _motion_blur(rng, img)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0)**rng.uniform(0.8, 1.25)
    img += rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _annotations(shapes, owner: np.ndarray, categories: Sequence[str]) -> List[dict]:
    """Boxes of the visible pixels of the shapes that are visible and large enough."""
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
    return anns


class _Style(NamedTuple):
    """What a style draws with: the object layout and the annotation rules are shared."""
    background: Callable  # (rng, h, w) -> float32 HxWx3
    texture: Callable  # (rng, hh, ww, colour) -> float32 hh x ww x 3, for objects and clutter
    clutter_before: Tuple[int, int]  # rng.integers range of the pieces drawn under the objects
    clutter_after: Tuple[int, int]  # ... and over them (small kinds only)
    any_clutter: Tuple[str, ...]
    small_clutter: Tuple[str, ...]
    sensor: Callable  # (rng, float32 image) -> uint8 image


_STYLES = dict(
    default=_Style(_background, _texture, (2, 9), (0, 4), _ANY_CLUTTER, _SMALL_CLUTTER,
                   _sensor_effects),
    shifted=_Style(_shifted_background, _shifted_texture, (6, 15), (1, 6), _SHIFTED_CLUTTER,
                   _SHIFTED_SMALL_CLUTTER, _shifted_sensor_effects),
)


def render(rng: np.random.Generator, h: int, w: int, categories: Sequence[str], min_objects: int,
           max_objects: int, min_size: float, max_size: float, style: str = 'default'):
    """Render one image; returns (uint8 HxWx3 image, annotations, owner map)."""
    st = _STYLES[style]
    img = st.background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)
    _draw_clutter(rng, img, None, int(rng.integers(*st.clutter_before)), st.any_clutter,
                  st.texture)
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    shapes = []  # (category index, full area)
    log_lo, log_hi = math.log(min_size), math.log(max_size)
    for k in range(n_obj):
        cat = int(rng.integers(len(categories)))
        size = math.exp(rng.uniform(log_lo, log_hi))
        shapes.append((cat, _draw_shape(rng, img, owner, k, categories[cat], size, st.texture)))
    _draw_clutter(rng, img, owner, int(rng.integers(*st.clutter_after)), st.small_clutter,
                  st.texture)
    image = st.sensor(rng, img)
    return image, _annotations(shapes, owner, categories), owner


def image_rng(seed: int, split: str, index: int, style: str = 'default') -> np.random.Generator:
    """The random stream of image ``index`` of ``split``: independent of the set's size.

    A non-default style has its own stream, so its images share no draws with the default ones.
    """
    key = [_SEED_TAG, int(seed), SPLIT_IDS[split], int(index)]
    if style != 'default':
        key.append(STYLES.index(style))
    return np.random.default_rng(key)


def render_synthetic_image(seed: int = 0,
                           split: str = 'train',
                           index: int = 0,
                           image_size: ImageSize = 128,
                           categories: Optional[Sequence[str]] = None,
                           min_objects: int = 1,
                           max_objects: int = 6,
                           min_object_size: float = DEFAULT_MIN_OBJECT_SIZE,
                           max_object_size: Optional[float] = None,
                           return_masks: bool = False,
                           style: str = 'default'):
    """Render image ``index`` of ``split`` exactly as :func:`generate_synthetic_coco` does.

    Returns ``(image, annotations)`` where ``image`` is an HxWx3 uint8 array (OpenCV BGR order)
    and each annotation is a dict with ``category`` (name), ``category_index`` (into
    ``categories``), ``bbox`` ([x, y, w, h] of the visible pixels), ``area`` (visible pixel count)
    and ``visible_fraction``. With ``return_masks=True`` a third element is a list of boolean HxW
    visible masks, one per annotation. ``style`` is one of :data:`STYLES` (see the module
    docstring).
    """
    if split not in SPLIT_IDS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    a = normalize_args(0, 0, image_size, categories, seed, min_objects, max_objects,
                       min_object_size, max_object_size, 'png', style=style)
    h, w = a['image_size']
    image, anns, owner = render(image_rng(a['seed'], split, index, style), h, w, a['categories'],
                                a['min_objects'], a['max_objects'], a['min_object_size'],
                                a['max_object_size'], style)
    if return_masks:
        masks = [owner == ann['instance'] for ann in anns]
        return image, anns, masks
    return image, anns
