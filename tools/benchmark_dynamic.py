"""Dynamic edge-cloud inference benchmark: edge exit + routers vs all-cloud, swept over offload
ratios, with ECCENTRIC's three variants side by side.

    python tools/benchmark_dynamic.py \
        --config configs/ecc_faster_rcnn_r18_synthetic_dynamic.py \
        --checkpoint work_dirs/demo/dynamic/epoch_6.pth \
        [--teacher-config configs/faster_rcnn_r18_fpn_synthetic.py] \
        [--teacher-checkpoint work_dirs/demo/baseline/epoch_12.pth] \
        [--data-root DIR] [--num-images N] [--ratios 0 0.1 ... 1] [--jpeg-quality 50] \
        [--rate-accuracy-json docs/benchmarks/rate_accuracy_val500.json] [--corruption fog 3] \
        [--out work_dirs/benchmarks/dynamic.json]

Routers: random (the control), score band (DCSB), class-distribution entropy, empty exit (entropy,
with the images where the exit finds nothing first), learned (an MLP on the exit's outputs,
regressing the per-image AP gain of offloading), the gain routers (the same MLP with the exit
maps' expected object count and score bands as well: 'gain rank' ranks the AP gain, 'gain class'
classifies "the cloud finds more objects here", 'gain class+ood' adds F_k's distance from the
fitting images' statistics), all fitted here on held-out calibration-split images
(``--num-router-train``: thousands are cheap to generate), and the per-image oracle (offloads the
images with the largest true gain: an upper reference). Thresholds are calibrated per target ratio on training images that are neither the
evaluation images nor the router's training images. Variants: Adaptive (every image through the
feature bitstream), Dynamic (exit + router + bitstream), Independent (exit + router, offloaded
images sent as JPEG to the unsplit teacher). Writes JSON, a table (.txt) and a plot (.png); the
targets of the issue are checked in the table's last lines.
"""
import argparse
import json
import os
import os.path as osp

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)

from ecc_tools.dynamic import plot, run_dynamic, table


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default='configs/ecc_faster_rcnn_r18_synthetic_dynamic.py')
    p.add_argument('--checkpoint', required=True, help='the trained dynamic model (exits)')
    p.add_argument('--teacher-config', default='configs/faster_rcnn_r18_fpn_synthetic.py')
    p.add_argument('--teacher-checkpoint', default='work_dirs/demo/baseline/epoch_12.pth')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=None)
    p.add_argument('--num-router-train', type=int, default=200,
                   help='held-out calibration-split images the learned routers are fitted on '
                   '(after the --num-calib threshold images)')
    p.add_argument('--num-calib', type=int, default=200)
    p.add_argument('--ratios', type=float, nargs='+',
                   default=[0, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1])
    p.add_argument('--jpeg-quality', type=int, default=50)
    p.add_argument('--bootstrap', type=int, default=200)
    p.add_argument('--rate-accuracy-json', help='rate-accuracy rows to draw beside (optional)')
    p.add_argument('--corruption', nargs=2, metavar=('NAME', 'SEVERITY'),
                   help='corrupt the evaluation images (e.g. fog 3); routers stay calibrated '
                   'on the clean held-out images')
    p.add_argument('--cache', help='pickle of the model passes: written, and reused by a re-run '
                   'with the same checkpoints and sizes (re-analysis without re-running models)')
    p.add_argument('--out', default='work_dirs/benchmarks/dynamic.json')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for r in args.ratios:
        if not 0 <= r <= 1:
            raise SystemExit(f'error: --ratios must lie in [0, 1], got {r}')
    res = run_dynamic(args.config, args.checkpoint, args.teacher_config, args.teacher_checkpoint,
                      args.data_root, args.num_images, args.num_router_train, args.num_calib,
                      args.ratios, args.jpeg_quality, args.bootstrap, args.cache,
                      args.corruption)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    base = osp.splitext(args.out)[0]
    res['command'] = 'python tools/benchmark_dynamic.py ' + ' '.join(argv or __import__(
        'sys').argv[1:])
    with open(args.out, 'w') as f:
        json.dump(res, f, indent=2)
    text = table(res)
    with open(base + '.txt', 'w') as f:
        f.write(text + '\n')
    ra = None
    if args.rate_accuracy_json:
        ra = json.load(open(args.rate_accuracy_json))['rows']
    plot(res, base + '.png', ra)
    print(text)
    print(f'\nwrote {args.out}, {base}.txt, {base}.png')


if __name__ == '__main__':
    main()
