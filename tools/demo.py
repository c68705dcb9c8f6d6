"""The main job on the embedded default: the whole edge-cloud story in one command.

    python tools/demo.py [--work-dir work_dirs/demo] [--data data/synthetic_coco] [--bandwidth 1]
    python tools/demo.py --detector rtmdet [--work-dir work_dirs/demo_rtmdet]
    python tools/demo.py --tiny --work-dir /tmp/demo_tiny   # smoke run: minutes, no real numbers

1. creates the synthetic COCO-format dataset if it is missing;
2. trains the unsplit teacher (Faster R-CNN R18-FPN), or reuses its checkpoint;
3. trains the split student with knowledge adaptation from the teacher (KnowledgeAdaptationHook),
   or reuses its checkpoint;
4. evaluates the teacher, cloud-only JPEG / WebP / AVIF at several qualities, 8-bit features
   and the student
   with CocoMetric + CommunicationMetric, prints one comparison table and saves the plot.

``--detector rtmdet`` runs the same stages with RTMDet-tiny (CSPNeXt) as teacher and split KD
student instead of Faster R-CNN R18 (no dynamic stage: its edge exit is configured for the
Faster R-CNN student).

Every stage is skipped when its result exists, and a half-finished training resumes. The exact
commands are printed, so each step can be re-run by hand with tools/train.py.

``--tiny`` runs every stage end to end at the smallest setting (the test suite does): its own
8 train / 4 val / 8 calibration images of 64 px (in ``WORK_DIR/data`` unless ``--data`` is
given) and one epoch per training (two for the KD student: one per stage), from copies of the
configs with that schedule written to ``WORK_DIR/tiny_configs``. Its numbers mean nothing.
"""
import argparse
import json
import os
import os.path as osp
import time
import warnings

# mmengine imports pkg_resources to resolve 'mmdet::' config paths; its deprecation notice is noise
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from ecc_tools import REPO  # noqa: E402  (imports ecc_mmdet: registers our components)
from ecc_tools.workflow import train_stage  # noqa: E402
from ecc_mmdet.datasets.synthetic_coco import ensure_synthetic_coco  # noqa: E402

DYNAMIC_CFG = 'configs/ecc_faster_rcnn_r18_synthetic_dynamic.py'
# what a sceptical user would send instead: the best image codecs at low and mid qualities
IMAGE_CODECS = {'jpeg': (10, 30, 60, 90), 'webp': (5, 30), 'avif': (5, 30)}
# the same stages with another detector family: (teacher, student) configs
DETECTORS = {
    'faster_rcnn': ('configs/faster_rcnn_r18_fpn_synthetic.py',
                    'configs/ecc_faster_rcnn_r18_synthetic_kd.py'),
    'rtmdet': ('configs/rtmdet_tiny_synthetic.py', 'configs/ecc_rtmdet_tiny_synthetic_kd.py'),
}


TINY_DATA = dict(num_train=8, num_val=4, num_calib=8, image_size=64, min_objects=2,
                 max_objects=4)


def tiny_config(config: str, work_dir: str) -> str:
    """A copy of ``config`` with the tiny schedule (see the module docstring); returns its path.
    The stage's final checkpoint follows (``epoch_<max_epochs>``), as for any config."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    kd = [h for h in cfg.get('custom_hooks', []) if h.get('type') == 'KnowledgeAdaptationHook']
    for h in kd:
        h.bottleneck_epochs = 1
    epochs = 2 if kd else 1
    cfg.train_cfg.update(max_epochs=epochs, val_interval=epochs)
    cfg.default_hooks.checkpoint.update(interval=1)
    cfg.default_hooks.logger.update(interval=1)
    for h in cfg.get('custom_hooks', []):
        if h.get('type') == 'RouterCalibrationHook':
            h.num_images = TINY_DATA['num_calib']
    path = osp.join(work_dir, 'tiny_configs', osp.basename(config))
    os.makedirs(osp.dirname(path), exist_ok=True)
    cfg.dump(path)
    return path


def compare(args, teacher_ckpt, student_ckpt, dynamic_ckpt=None):
    from mmengine.config import Config

    from ecc_tools.rate_accuracy import plot, run_rate_accuracy, summarize, table
    out = osp.join(args.work_dir, 'comparison.json')
    ckpts = [c for c in (teacher_ckpt, student_ckpt, dynamic_ckpt) if c]
    newest_input = max(osp.getmtime(c) for c in ckpts)
    if osp.isfile(out) and osp.getmtime(out) > newest_input:
        print(f'  reusing {out}', flush=True)
        res = json.load(open(out))
        if res.get('bandwidth_mbps') == args.bandwidth and \
                res.get('image_codecs') == {k: list(v) for k, v in IMAGE_CODECS.items()}:
            return res['rows'], res['summary']
    teacher_cfg, student_cfg = DETECTORS[args.detector]
    scfg = Config.fromfile(student_cfg)
    beta = scfg.model.compressor.get('beta')
    dynamic = []
    if dynamic_ckpt:
        router = Config.fromfile(DYNAMIC_CFG).model.router
        dynamic = [(f"{router['type'].replace('Router', '').lower()} router, target "
                    f"offload {router['target_offload_ratio']:g}", DYNAMIC_CFG, dynamic_ckpt)]
    rows = run_rate_accuracy(
        teacher_cfg, teacher_ckpt, [(f'KD student (beta={beta:g})', student_cfg, student_ckpt)],
        image_codecs=IMAGE_CODECS, quantize_bits=(8, ), split_after=scfg.model.split_after,
        data_root=args.data, bandwidth=args.bandwidth, dynamic_students=dynamic)
    summary = summarize(rows)
    with open(out, 'w') as f:
        json.dump(dict(rows=rows, summary=summary, bandwidth_mbps=args.bandwidth,
                       image_codecs={k: list(v) for k, v in IMAGE_CODECS.items()}), f, indent=2)
    plot(rows, osp.join(args.work_dir, 'rate_accuracy.png'))
    with open(osp.join(args.work_dir, 'comparison.txt'), 'w') as f:
        f.write(table(rows, summary, args.bandwidth) + '\n')
    return rows, summary


def parse_args(argv=None):
    """The command line, with the work directory and data defaults of ``--detector``/``--tiny``
    filled in."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--detector', choices=sorted(DETECTORS), default='faster_rcnn',
                        help='detector family of teacher and student (default faster_rcnn)')
    parser.add_argument('--work-dir', default=None,
                        help='default work_dirs/demo (work_dirs/demo_rtmdet for rtmdet)')
    parser.add_argument('--data', default=None,
                        help='default data/synthetic_coco (WORK_DIR/data with --tiny)')
    parser.add_argument('--bandwidth', type=float, default=1.0,
                        help='uplink Mbit/s for the modelled latency column (default 1)')
    parser.add_argument('--tiny', action='store_true',
                        help='smoke run: a few 64-px images, one epoch per stage (see above)')
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = 'work_dirs/demo' if args.detector == 'faster_rcnn' else \
            f'work_dirs/demo_{args.detector}'
    if args.data is None:
        args.data = osp.join(args.work_dir, 'data') if args.tiny else 'data/synthetic_coco'
    return args


def _dataset(args, steps: int) -> dict:
    """Stage 1: the synthetic dataset, generated or reused -> its summary."""
    print(f'[1/{steps}] synthetic COCO dataset', flush=True)
    summary = ensure_synthetic_coco(args.data, progress=True,
                                    **(TINY_DATA if args.tiny else dict(num_calib=400)))
    print(f"  {'generated' if summary['generated'] else 'reused'} {args.data}: "
          f"{summary['num_images']['train']} train / {summary['num_images']['val']} val / "
          f"{summary['num_images']['calib']} held-out router-calibration images", flush=True)
    return summary


def _train(args, train_cfgs, steps: int):
    """The training stages -> checkpoints of (teacher, student, dynamic system or None)."""
    teacher_cfg, student_cfg = DETECTORS[args.detector]
    print(f'[2/{steps}] teacher: unsplit {args.detector} ({teacher_cfg})', flush=True)
    teacher = train_stage(train_cfgs[0], osp.join(args.work_dir, 'baseline'), args.data)

    print(f'[3/{steps}] student: split detector trained from the teacher ({student_cfg})',
          flush=True)
    student = train_stage(train_cfgs[1], osp.join(args.work_dir, 'student'), args.data,
                          [f'teacher_config={teacher_cfg}', f'teacher_checkpoint={teacher}'])

    dynamic = None
    if args.detector == 'faster_rcnn':
        print(f'[4/5] dynamic system: edge exit trained on the frozen student ({DYNAMIC_CFG})',
              flush=True)
        dynamic = train_stage(train_cfgs[2], osp.join(args.work_dir, 'dynamic'), args.data,
                              [f'load_from={student}'])
    return teacher, student, dynamic


def _evaluate(args, steps: int, num_val: int, ckpts, t_start: float) -> None:
    """The last stage: the comparison table, printed and written with the wall time."""
    teacher, student, dynamic = ckpts
    print(f'[{steps}/{steps}] evaluate teacher, cloud-only JPEG/WebP/AVIF, 8-bit features, the '
          f"student{' and the dynamic system' if dynamic else ''}", flush=True)
    from ecc_tools.rate_accuracy import table
    rows, res = compare(args, teacher, student, dynamic)
    print(f"\nSynthetic validation set ({num_val} images), COCO bbox mAP "
          '0-100; latency is '
          f'modelled at a {args.bandwidth:g} Mbit/s uplink with this machine\'s compute times')
    print(table(rows, res, args.bandwidth))
    wall = time.time() - t_start
    print(f'\nwall time {wall:.0f} s; logs, checkpoints, comparison.json and rate_accuracy.png in '
          f'{args.work_dir}')
    with open(osp.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump(dict(rows=rows, summary=res, wall_time_s=wall), f, indent=2)


def main(argv=None):
    args = parse_args(argv)
    train_cfgs = [*DETECTORS[args.detector], DYNAMIC_CFG]
    steps = 5 if args.detector == 'faster_rcnn' else 4
    os.chdir(REPO)
    if args.tiny:
        train_cfgs = [tiny_config(c, args.work_dir) for c in train_cfgs]
    t_start = time.time()
    summary = _dataset(args, steps)
    ckpts = _train(args, train_cfgs, steps)
    _evaluate(args, steps, summary['num_images']['val'], ckpts, t_start)


if __name__ == '__main__':
    main()
