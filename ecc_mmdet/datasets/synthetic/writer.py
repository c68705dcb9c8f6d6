"""Writing (and reusing) a synthetic COCO-format set on disk.

Layout written by :func:`generate_synthetic_coco`::

    out_dir/
        train/000000.png ...
        val/000000.png ...
        calib/000000.png ...   # only with num_calib > 0
        annotations/instances_train.json
        annotations/instances_val.json
        annotations/instances_calib.json
        meta.json            # generation arguments; written last

The annotation files and ``meta.json`` are written through a temporary file and renamed, and they
are deleted before any image is (re)written, so an interrupted run is always detected by
:func:`ensure_synthetic_coco`, which regenerates only when the set is missing, incomplete or was
generated with other arguments. Two runs with the same arguments give byte-identical files.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from .render import image_rng, render
from .spec import (DEFAULT_MIN_OBJECT_SIZE, GENERATOR_VERSION, SPLITS, ImageSize,
                   normalize_args, splits_of)

__all__ = ['generate_synthetic_coco', 'ensure_synthetic_coco']

JPEG_QUALITY = 95
_IMAGE_NAME_RE = re.compile(r'^\d{6}\.(png|jpg)$')


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
        ann_files={s: str(v) for s, v in p['ann_files'].items() if s in splits_of(args)},
        img_dirs={s: str(v) for s, v in p['img_dirs'].items() if s in splits_of(args)},
        meta_file=str(p['meta']),
        categories=list(args['categories']),
        image_size=tuple(args['image_size']),
        num_images={s: counts[s][0] for s in splits_of(args)},
        num_annotations={s: counts[s][1] for s in splits_of(args)},
        generated=generated,
        seconds=seconds,
        args=dict(args),
    )


def _progress_ticker(args: dict, progress: bool):
    """A callable to call once per written image; prints about ten progress lines in all."""
    total = sum(args.get(f'num_{s}', 0) for s in SPLITS)
    step = max(1, total // 10)
    done = 0

    def tick(split: str) -> None:
        nonlocal done
        done += 1
        if progress and (done % step == 0 or done == total):
            print(f'[synthetic_coco] {done}/{total} images ({split})', file=sys.stderr,
                  flush=True)

    return tick


def _clear_images(img_dir: Path) -> None:
    """Remove the stale images of an earlier run (only our own names)."""
    img_dir.mkdir(parents=True, exist_ok=True)
    for f in img_dir.iterdir():
        if _IMAGE_NAME_RE.match(f.name) and f.is_file():
            f.unlink()


def _write_split(args: dict, split: str, img_dir: Path, tick) -> dict:
    """Render and write the images of ``split``; returns its COCO dict."""
    h, w = args['image_size']
    cats, fmt = args['categories'], args['image_format']
    style = args.get('style', 'default')  # absent from the args of default sets
    _clear_images(img_dir)
    images, annotations = [], []
    for i in range(args[f'num_{split}']):
        image, anns, _ = render(image_rng(args['seed'], split, i, style), h, w, cats,
                                args['min_objects'], args['max_objects'],
                                args['min_object_size'], args['max_object_size'], style)
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
        tick(split)
    what = split if style == 'default' else f'{split}, {style} style'
    return dict(
        info=dict(description=f'ecc_mmdet synthetic shapes ({what})',
                  version=str(GENERATOR_VERSION),
                  seed=args['seed']),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(cats)],
    )


def _generate(out_dir: Path, args: dict, progress: bool) -> dict:
    t0 = time.perf_counter()
    p = _paths(out_dir)
    # invalidate first: an interrupted run then leaves no annotation files / meta behind
    for f in [p['meta'], *p['ann_files'].values()]:
        if f.exists():
            f.unlink()
    tick = _progress_ticker(args, progress)
    counts = {}
    for split in splits_of(args):
        coco = _write_split(args, split, p['img_dirs'][split], tick)
        counts[split] = (len(coco['images']), len(coco['annotations']))
        _atomic_write_text(p['ann_files'][split], _dump_json(coco))
    _atomic_write_text(p['meta'], json.dumps(args, indent=2, sort_keys=True) + '\n')
    return _summary(out_dir, args, counts, True, time.perf_counter() - t0)


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
    for split in splits_of(args):
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
                            num_calib: int = 0,
                            style: str = 'default',
                            *,
                            reuse: bool = False) -> dict:
    """(Re)generate the synthetic COCO-format dataset under ``out_dir``.

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
        style: ``'default'`` (what models train on) or ``'shifted'``: other textures,
            backgrounds, clutter and sensor effects with the same classes and box rules, to test
            on data unlike the training set (see :mod:`.render`). Recorded in ``meta.json`` only
            when not ``'default'``, so a set of one style is never reused for the other.
        reuse: write nothing when a complete set made with the same arguments is there
            (what :func:`ensure_synthetic_coco` does); False regenerates unconditionally.

    Returns:
        dict with ``out_dir``, ``ann_files``/``img_dirs`` (per split), ``meta_file``,
        ``categories``, ``image_size``, ``num_images``/``num_annotations`` (per split),
        ``generated`` (whether anything was written), ``seconds`` and the normalised ``args``.
    """
    args = normalize_args(num_train, num_val, image_size, categories, seed, min_objects,
                          max_objects, min_object_size, max_object_size, image_format, num_calib,
                          style)
    out = Path(out_dir)
    summary = _existing_summary(out, args) if reuse else None
    if summary is None:
        return _generate(out, args, progress)
    if progress:
        print(f'[synthetic_coco] reusing existing dataset in {out}', file=sys.stderr, flush=True)
    return summary


def ensure_synthetic_coco(out_dir: Union[str, os.PathLike], *, force: bool = False,
                          **kwargs) -> dict:
    """:func:`generate_synthetic_coco` (same keyword arguments) that reuses a complete set.

    Nothing is written when ``meta.json`` records the same (normalised) arguments and generator
    version, both annotation files parse and every image they list exists; otherwise (or with
    ``force=True``) the set is regenerated. The summary's ``generated`` tells which happened.
    """
    return generate_synthetic_coco(out_dir, reuse=not force, **kwargs)
