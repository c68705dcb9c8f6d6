"""Command line of the synthetic COCO-format dataset generator.

    python -m ecc_mmdet.datasets.synthetic_coco --out data/synthetic_coco [--num-train N ...]

(``tools/make_synthetic_coco.py`` is the same from a checkout.) What is drawn and how boxes are
defined: :mod:`ecc_mmdet.datasets.synthetic.render`; the files written:
:mod:`ecc_mmdet.datasets.synthetic.writer`. The package's names are re-exported here for code that
imported them from this module.
"""
from __future__ import annotations

import argparse
import sys

from .synthetic import (DEFAULT_MIN_OBJECT_SIZE, GENERATOR_VERSION, STYLES, SYNTHETIC_CLASSES,
                        ensure_synthetic_coco, generate_synthetic_coco, render_synthetic_image)

__all__ = [
    'SYNTHETIC_CLASSES', 'GENERATOR_VERSION', 'render_synthetic_image',
    'generate_synthetic_coco', 'ensure_synthetic_coco', 'main'
]


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
    parser.add_argument('--style', choices=STYLES, default='default',
                        help="rendering domain; 'shifted' draws other textures, backgrounds, "
                        'clutter and sensor effects (same classes and box rules), to test '
                        'models trained on the default style on data unlike their training '
                        'set (nothing is trained on it)')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if a matching dataset exists')
    parser.add_argument('--quiet', action='store_true', help='no progress lines')
    return parser.parse_args(argv)


def _print_summary(summary: dict) -> None:
    h, w = summary['image_size']
    state = (f'generated in {summary["seconds"]:.2f} s'
             if summary['generated'] else 'already up to date (reused)')
    print(f'synthetic COCO dataset in {summary["out_dir"]}: {state}')
    style = summary['args'].get('style')  # only in the args of non-default sets
    print(f'  image size {h}x{w}, categories: {", ".join(summary["categories"])}'
          + (f', {style} style' if style else ''))
    for s in summary['num_images']:
        print(f'  {s:5s}: {summary["num_images"][s]:6d} images, '
              f'{summary["num_annotations"][s]:6d} boxes -> {summary["ann_files"][s]}')


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
            style=a.style,
            force=a.force)
    except ValueError as e:
        print(f'make_synthetic_coco: error: {e}', file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
