#!/usr/bin/env python
"""Generate the deterministic synthetic COCO-format shapes dataset.

Example (from the repository root)::

    python tools/make_synthetic_coco.py --out data/synthetic_coco --num-train 400 --num-val 100 \
        --image-size 128 --seed 0 [--categories circle star ...] [--format png] [--force]

An existing dataset generated with the same arguments is reused unless ``--force`` is given.
See :mod:`ecc_mmdet.datasets.synthetic_coco` for what is drawn and how boxes are defined.
"""
import sys

import ecc_tools  # noqa: F401  (finds ecc_mmdet in a checkout that is not pip-installed)
from ecc_mmdet.datasets.synthetic_coco import main

__all__ = ['main']

if __name__ == '__main__':
    sys.exit(main())
