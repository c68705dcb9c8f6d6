"""The main job on the embedded default: the whole edge-cloud system in one command.

    python tools/demo.py [--work-dir work_dirs/demo] [--data data/synthetic_coco] [--bandwidth 1]
                         [--no-serve]
    python tools/demo.py --detector rtmdet [--work-dir work_dirs/demo_rtmdet]
    python tools/demo.py --tiny --work-dir /tmp/demo_tiny   # smoke run: minutes, no real numbers

1. creates the synthetic COCO-format dataset if it is missing;
2. trains the unsplit teacher (Faster R-CNN R18-FPN), or reuses its checkpoint;
3. trains the system in one run (configs/ecc_faster_rcnn_r18_synthetic_system.py), or reuses its
   checkpoint: the split student with knowledge adaptation from the teacher
   (KnowledgeAdaptationHook) and the task-driven channel-context codec with GDN, with the edge exit
   learning alongside on the frozen edge features; the router is calibrated on the held-out
   calibration split at the end;
4. evaluates the teacher, cloud-only JPEG / WebP / AVIF at several qualities (at the camera
   resolution and, when the camera images are larger, fitted to the detector's input), 8-bit
   features, the student and the system (exit + router + task-driven codec at its default
   operating point) with CocoMetric + CommunicationMetric; each learned row gets its bytes as a
   multiple of what the input-codec front needs for the same mAP (the student row is the
   system's checkpoint without exit and router: every image sent to the cloud);
5. serves the system end to end (``ecc_tools.e2e``; ``--no-serve`` skips it): the light edge
   exported to ONNX, the cloud server on 127.0.0.1, the validation images streamed through the
   light edge client and scored with COCO; mAP, bytes on the wire, end-to-end latency p50/p95 and
   the images whose detections differ from the in-process evaluation (``--tiny`` fails if any
   does). Then prints one table (with the served row) and saves the plot.

The codec is the single-rate task-driven hyperprior with a channel-context model and GDN
(configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py), the best one measured
(docs/results.md, "Training variants"). A variable-rate codec would serve every rate
from one model, but the rule is to take it only if each of its points holds the single-rate
students' accuracy within 0.5 mAP, and the task-driven variable-rate hyperprior does not
(docs/results.md). The student and its exit can also be trained one after the other
(configs/ecc_faster_rcnn_r18_synthetic_kd_hp_task.py, then ..._dynamic_hp.py, on the plain
hyperprior), and the factorized student stays in the benchmark tools
(configs/ecc_faster_rcnn_r18_synthetic_kd.py, configs/ecc_faster_rcnn_r18_synthetic_dynamic.py).

``--detector rtmdet`` runs stages 1-4 with RTMDet-tiny (CSPNeXt) as teacher and split KD
(factorized) student instead (no system: its edge exit is configured for the Faster R-CNN
student).

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
from typing import NamedTuple, Optional

# mmengine imports pkg_resources to resolve 'mmdet::' config paths; its deprecation notice is noise
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

from ecc_tools import REPO  # noqa: E402  (imports ecc_mmdet: registers our components)
from ecc_tools.workflow import train_stage  # noqa: E402
from mmengine.config import Config  # noqa: E402
from ecc_mmdet.datasets.synthetic_coco import ensure_synthetic_coco  # noqa: E402

SYSTEM_CFG = 'configs/ecc_faster_rcnn_r18_synthetic_system.py'
# what a sceptical user would send instead: the best image codecs at low and mid qualities
IMAGE_CODECS = {'jpeg': (10, 30, 60, 90), 'webp': (5, 30), 'avif': (5, 30)}


class Detector(NamedTuple):
    """One detector family's stages: configs, the trained work directory and the student's row
    name. With a ``system`` config (student + edge exit + router, trained in one run) the
    student row is that checkpoint evaluated by the ``student`` config (every image sent)."""
    teacher: str
    student: str
    student_dir: str
    student_name: str
    system: Optional[str] = None

    @property
    def trained(self) -> str:
        """The config the student stage trains."""
        return self.system or self.student


DETECTORS = {
    'faster_rcnn': Detector('configs/faster_rcnn_r18_fpn_synthetic.py',
                            'configs/ecc_faster_rcnn_r18_synthetic_kd_cc_task_gdn.py', 'system',
                            'task-driven channel-context GDN KD student', SYSTEM_CFG),
    'rtmdet': Detector('configs/rtmdet_tiny_synthetic.py',
                       'configs/ecc_rtmdet_tiny_synthetic_kd.py', 'student', 'KD student'),
}
SERVED_SETTING = 'light edge client -> serve_cloud.py'


TINY_DATA = dict(num_train=8, num_val=4, num_calib=8, image_size=64, min_objects=2,
                 max_objects=4)


def tiny_config(config: str, work_dir: str) -> str:
    """A copy of ``config`` with the tiny schedule (see the module docstring); returns its path.
    The stage's final checkpoint follows (``epoch_<max_epochs>``), as for any config."""
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


def fit_to_input(teacher_cfg: str, image_size) -> bool:
    """Whether sending an image fitted to the detector's input changes it: only images larger
    than that input are scaled (``CompressImage(max_size=...)`` never scales up)."""
    from ecc_tools.rate_accuracy import detector_input_size
    size = detector_input_size(Config.fromfile(teacher_cfg).test_dataloader.dataset.pipeline)
    h, w = image_size
    return size is not None and (w > size[0] or h > size[1])


def system_setting() -> str:
    """The system row's name: its router and default operating point, from its config."""
    router = Config.fromfile(SYSTEM_CFG).model.router
    return (f"system: {router['type'].replace('Router', '').lower()} router, target offload "
            f"{router['target_offload_ratio']:g}")


def compare(args, ckpts, fitted: bool):
    """Stage 4: every in-process row (cached in ``comparison.json`` while it is newer than the
    checkpoints) -> rows."""
    from ecc_tools.rate_accuracy import plot, run_rate_accuracy, summarize, table
    out = osp.join(args.work_dir, 'comparison.json')
    teacher_ckpt, student_ckpt = ckpts
    settings = dict(bandwidth_mbps=args.bandwidth, fit_to_input=fitted,
                    image_codecs={k: list(v) for k, v in IMAGE_CODECS.items()})
    if osp.isfile(out) and osp.getmtime(out) > max(osp.getmtime(c) for c in ckpts):
        res = json.load(open(out))
        if all(res.get(k) == v for k, v in settings.items()):
            print(f'  reusing {out}', flush=True)
            return res['rows']
    det = DETECTORS[args.detector]
    scfg = Config.fromfile(det.student)
    name = f"{det.student_name} (beta={scfg.model.compressor.get('beta'):g})"
    system = [(system_setting(), det.system, student_ckpt)] if det.system else []
    rows = run_rate_accuracy(
        det.teacher, teacher_ckpt, [(name, det.student, student_ckpt)],
        image_codecs=IMAGE_CODECS, fit_to_input=fitted, quantize_bits=(8, ),
        split_after=scfg.model.split_after, data_root=args.data, bandwidth=args.bandwidth,
        dynamic_students=system)
    with open(out, 'w') as f:
        json.dump(dict(rows=rows, summary=summarize(rows), **settings), f, indent=2)
    plot(rows, osp.join(args.work_dir, 'rate_accuracy.png'))
    with open(osp.join(args.work_dir, 'comparison.txt'), 'w') as f:
        f.write(table(rows, summarize(rows), args.bandwidth) + '\n')
    return rows


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
    parser.add_argument('--no-serve', dest='serve', action='store_false',
                        help='skip the last stage: the system served over HTTP on loopback')
    parser.add_argument('--tiny', action='store_true',
                        help='smoke run: a few 64-px images, one epoch per stage (see above)')
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = 'work_dirs/demo' if args.detector == 'faster_rcnn' else \
            f'work_dirs/demo_{args.detector}'
    if args.data is None:
        args.data = osp.join(args.work_dir, 'data') if args.tiny else 'data/synthetic_coco'
    args.serve = args.serve and DETECTORS[args.detector].system is not None  # a system's stage
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
    """The training stages -> checkpoints of (teacher, student or system)."""
    det = DETECTORS[args.detector]
    print(f'[2/{steps}] teacher: unsplit {args.detector} ({det.teacher})', flush=True)
    teacher = train_stage(train_cfgs[0], osp.join(args.work_dir, 'baseline'), args.data)
    what = ('the system: split student trained from the teacher, edge exit alongside, router '
            'calibrated') if det.system else 'student: split detector trained from the teacher'
    print(f'[3/{steps}] {what} ({det.trained})', flush=True)
    student = train_stage(train_cfgs[1], osp.join(args.work_dir, det.student_dir), args.data,
                          [f'teacher_config={det.teacher}', f'teacher_checkpoint={teacher}'])
    return teacher, student


def _serve(args, step: str, dynamic_ckpt: str) -> dict:
    """The last stage: the system end to end over HTTP (cached in ``served/served.json`` while
    it is newer than the system's checkpoint) -> its summary."""
    from ecc_tools.e2e import run_served
    print(f'{step} the system served end to end: light edge (ONNX) -> HTTP on 127.0.0.1 -> '
          'cloud server', flush=True)
    out_dir = osp.join(args.work_dir, 'served')
    cached = osp.join(out_dir, 'served.json')
    if osp.isfile(cached) and osp.getmtime(cached) > osp.getmtime(dynamic_ckpt):
        print(f'  reusing {cached}', flush=True)
        return json.load(open(cached))
    return run_served(SYSTEM_CFG, dynamic_ckpt, args.data, out_dir, args.bandwidth)


def _check_served(args, served: dict) -> None:
    """``--tiny`` (the test suite's run) fails when the served system is not the in-process
    one; a full run reports it in the table's last line."""
    differ = served['differing_images']
    same_bytes = abs(served['wire_bytes_per_image'] - served['metric_bytes_per_image']) < 1e-6
    if args.tiny and (differ or not same_bytes):
        raise RuntimeError(
            f'served over HTTP, the system differs from its in-process evaluation: detections '
            f'of images {differ}; {served["wire_bytes_per_image"]:.1f} B/image on the wire vs '
            f'{served["metric_bytes_per_image"]:.1f} counted by CommunicationMetric '
            f'(see {osp.join(args.work_dir, "served")})')


def _report(args, num_val: int, rows, served, t_start: float, note: str) -> None:
    """The comparison table with the served row, printed and written with the wall time."""
    from ecc_tools.e2e import served_row, summary_line
    from ecc_tools.rate_accuracy import summarize, table
    if served is not None:
        rows = rows + [served_row(served, SERVED_SETTING)]
    res = summarize(rows)
    print(f"\nSynthetic validation set ({num_val} images), COCO bbox mAP 0-100; latency is "
          f'modelled at a {args.bandwidth:g} Mbit/s uplink with this machine\'s compute times'
          f'{note}')
    print(table(rows, res, args.bandwidth))
    if served is not None:
        print(summary_line(served))
    wall = time.time() - t_start
    print(f'\nwall time {wall:.0f} s; logs, checkpoints, comparison.json and rate_accuracy.png in '
          f'{args.work_dir}')
    with open(osp.join(args.work_dir, 'summary.json'), 'w') as f:
        json.dump(dict(rows=rows, summary=res, served=served, wall_time_s=wall), f, indent=2)


def main(argv=None):
    args = parse_args(argv)
    det = DETECTORS[args.detector]
    train_cfgs = [det.teacher, det.trained]
    steps = 4 + args.serve
    os.chdir(REPO)
    if args.tiny:
        train_cfgs = [tiny_config(c, args.work_dir) for c in train_cfgs]
    t_start = time.time()
    summary = _dataset(args, steps)
    ckpts = _train(args, train_cfgs, steps)
    fitted = fit_to_input(det.teacher, summary['image_size'])
    print(f'[4/{steps}] evaluate the teacher, cloud-only JPEG/WebP/AVIF, 8-bit features, the '
          f"student{' and the system' if det.system else ''}", flush=True)
    rows = compare(args, ckpts, fitted)
    served = _serve(args, f'[{steps}/{steps}]', ckpts[1]) if args.serve else None
    h, w = summary['image_size']
    note = '' if fitted else (
        f'; the camera images ({w}x{h}) are no larger than the detector\'s input, so each '
        'image-codec row is also its detector-size row')
    _report(args, summary['num_images']['val'], rows, served, t_start, note)
    if served is not None:
        _check_served(args, served)


if __name__ == '__main__':
    main()
