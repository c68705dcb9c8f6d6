"""MEANet's hard classes: the classes the main edge exit does worst on, from its per-class AP on
held-out images (the config's calibration split, never the evaluation split).

    python tools/select_hard_classes.py configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
        work_dirs/demo/dynamic/epoch_12.pth [--num-images 200] [--fraction 0.5] [--data-root D]

Prints the per-class AP table and the ``hard_classes=[...]`` line for the extension-exit config
(``configs/ecc_faster_rcnn_r18_synthetic_dynamic_ext.py``).
"""
import argparse
import contextlib
import io
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
import numpy as np

from ecc_mmdet.apis.inference import iter_batches
from ecc_mmdet.deployment.calibration import tier_predictions
from ecc_mmdet.evaluation.bootstrap import ImageBootstrap
from ecc_mmdet.utils import ConfigError

from ecc_tools.dynamic import load_dynamic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--num-images', type=int, default=200)
    p.add_argument('--fraction', type=float, default=0.5, help='share of classes that are hard')
    p.add_argument('--data-root')
    args = p.parse_args(argv)
    try:
        # every image on the main exit, raw scores, no extension
        _, model, calib = load_dynamic(
            args.config, args.checkpoint, args.data_root, extension_exit=None, hard_classes=None,
            router=dict(type='RandomRouter', threshold=1.0), train_exits_only=False,
            calibrate_scores=False)
    except (ConfigError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    n = min(args.num_images, len(calib))
    preds = tier_predictions(model, iter_batches(model, calib, n, batch_size=4), False)
    boot = ImageBootstrap(calib.ann_file, [q['img_id'] for q in preds], num_samples=1)
    ev = boot.evaluate(preds, calib.cat_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    prec = ev.eval['precision'][..., 0, -1]
    ap = []
    for k in range(prec.shape[2]):
        v = prec[:, :, k]
        ap.append(float(v[v > -1].mean()) if (v > -1).any() else 0.0)
    names = calib.metainfo['classes']
    k_hard = max(1, int(round(args.fraction * len(ap))))
    hard = sorted(np.argsort(ap, kind='stable')[:k_hard].tolist())
    print(f'main-exit AP per class on {n} held-out images:')
    for i, (name, a) in enumerate(zip(names, ap)):
        print(f"  {i}: {name:<12} {100 * a:5.1f}{'   hard' if i in hard else ''}")
    print(f'hard_classes={hard}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
