"""Rate-accuracy benchmark: learned bottleneck vs sending the image (JPEG, WebP, AVIF) vs n-bit
features.

    python tools/benchmark_rate_accuracy.py \
        --teacher-config configs/faster_rcnn_r18_fpn_synthetic.py \
        --teacher-checkpoint work_dirs/demo/baseline/epoch_12.pth \
        --student beta=0.05 configs/ecc_faster_rcnn_r18_synthetic_kd.py work_dirs/demo/student/epoch_8.pth \
        [--student NAME CONFIG CKPT ...] [--train-betas 0.01 0.05 0.2] \
        [--jpeg-qualities 5 10 20 40 70 95] [--webp-qualities ...] [--avif-qualities ...] \
        [--fit-to-input] [--quantize-bits 8 4] [--data-root DIR] \
        [--family RTMDet-tiny configs/rtmdet_tiny_synthetic.py TEACHER.pth \
                  configs/ecc_rtmdet_tiny_synthetic_kd.py STUDENT.pth] \
        [--out work_dirs/benchmarks/rate_accuracy.json]

In one run, on one dataset (default: the config's synthetic validation set), it evaluates
- the teacher on the original images (accuracy ceiling; nothing transmitted is counted),
- cloud-only: the teacher on images sent with JPEG, WebP and AVIF (OpenCV's encoders; bytes =
  the real file size) at each quality, on the camera image and, with --fit-to-input, on the image
  first scaled down to the detector's input size (a no-op for images already that small),
- n-bit features: QuantizeNeck at the students' split point, teacher weights, no training,
- learned bottleneck students (given with --student, or trained here with --train-betas),
- systems (--system): a student with its edge exit and calibrated router, as `make demo`'s,
- other detector families (--family): their own teacher, on the original images and sent with
  WebP, and their KD student, so students of different detectors compare at the same bytes,
and writes JSON rows (method, setting, bytes/image, bbox mAP, edge GFLOPs, latency), a table, a
rate-accuracy plot (PNG, bytes on a log axis) and the BD-rate of the learned bottleneck against
the Pareto front of all input codecs (and against each codec), plus the check of the targets:
BD-rate <= -50 % against that front; a student within 1 mAP point of the teacher at <= 1/4 the
bytes of the cheapest input-codec setting within 1 mAP point; edge FLOPs <= 15 %. An empty
--X-qualities list skips that codec.
"""
import argparse
import json
import os
import os.path as osp

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)

from ecc_tools.rate_accuracy import plot, run_rate_accuracy, summarize, table

KD_CONFIG = 'configs/ecc_faster_rcnn_r18_synthetic_kd.py'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--teacher-config', default='configs/faster_rcnn_r18_fpn_synthetic.py')
    p.add_argument('--teacher-checkpoint', default='work_dirs/demo/baseline/epoch_12.pth')
    p.add_argument('--student', nargs=3, action='append', default=[],
                   metavar=('NAME', 'CONFIG', 'CKPT'), help='a trained split student')
    p.add_argument('--variable-rate-student', nargs=3, action='append', default=[],
                   metavar=('NAME', 'CONFIG', 'CKPT'),
                   help='a student with a VariableRateBottleneckNeck: a row per rate point')
    p.add_argument('--system', nargs=3, action='append', default=[],
                   metavar=('NAME', 'CONFIG', 'CKPT'),
                   help='a trained system (student + edge exit + router, e.g. '
                        'configs/ecc_faster_rcnn_r18_synthetic_system.py): the images its '
                        'router keeps finish on the edge and send nothing')
    p.add_argument('--family', nargs=5, action='append', default=[],
                   metavar=('NAME', 'TEACHER_CFG', 'TEACHER_CKPT', 'STUDENT_CFG', 'STUDENT_CKPT'),
                   help='another detector family: its teacher (original images and WebP) and '
                        'its KD student')
    p.add_argument('--family-webp-qualities', type=int, nargs='*', default=[5, 30])
    p.add_argument('--train-betas', type=float, nargs='*', default=[],
                   help=f'train a KD student ({KD_CONFIG}) per beta, reusing finished ones')
    p.add_argument('--students-dir', default='work_dirs/benchmarks/students')
    p.add_argument('--jpeg-qualities', type=int, nargs='*', default=[5, 10, 20, 40, 70, 95])
    p.add_argument('--webp-qualities', type=int, nargs='*', default=[1, 5, 10, 20, 40, 70, 95])
    p.add_argument('--avif-qualities', type=int, nargs='*', default=[1, 5, 15, 30, 50, 70, 90])
    p.add_argument('--fit-to-input', action='store_true',
                   help='also send each image scaled down to the detector input size')
    p.add_argument('--quantize-bits', type=int, nargs='*', default=[8, 4])
    p.add_argument('--split-after', type=int, default=1,
                   help='split point of the QuantizeNeck baselines (default: the students\')')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=None)
    p.add_argument('--bandwidth', type=float, default=1.0, help='Mbit/s for the latency column')
    p.add_argument('--bootstrap', type=int, default=200,
                   help='image resamples for the 95%% intervals (0: none)')
    p.add_argument('--merge', metavar='PREVIOUS_JSON',
                   help='add the rows of an earlier run on the same images, teacher and '
                        'bootstrap (checked) that this run does not re-evaluate, e.g. to add a '
                        'student without re-encoding every input-codec setting')
    p.add_argument('--out', default='work_dirs/benchmarks/rate_accuracy.json')
    return p.parse_args(argv)


def merge_rows(previous_json: str, rows: list) -> list:
    """The earlier rows in their order (those re-evaluated now replaced), then this run's new
    ones. Refuses a file made on other images,
    with another teacher or other bootstrap resamples (the teacher's mAP and each resampled mAP
    must agree to float noise), since its intervals would not be paired with this run's."""
    with open(previous_json) as f:
        old = json.load(f)['rows']
    key = lambda r: (r['method'], r['setting'])  # noqa: E731
    new_teacher = next((r for r in rows if r['method'] == 'teacher'), None)
    old_teacher = next((r for r in old if r['method'] == 'teacher'), None)

    def same(a, b):  # equal up to float noise of another thread count (0.05 mAP points)
        sa, sb = a.get('mAP_samples') or [], b.get('mAP_samples') or []
        return abs(a['bbox_mAP'] - b['bbox_mAP']) <= 0.05 and len(sa) == len(sb) and all(
            abs(x - y) <= 0.05 for x, y in zip(sa, sb))

    if new_teacher is None or old_teacher is None or not same(new_teacher, old_teacher):
        raise SystemExit(f'--merge {previous_json}: its teacher row differs from this run\'s '
                         '(other images, teacher checkpoint or --bootstrap); re-run everything '
                         'or merge a file from the same setup')
    fresh = {key(r): r for r in rows}
    known = {key(r) for r in old}
    return [fresh.get(key(r), r) for r in old] + [r for r in rows if key(r) not in known]


def train_students(args, data_root):
    from ecc_tools.workflow import train_stage
    out = []
    for beta in args.train_betas:
        work = osp.join(args.students_dir, f'beta_{beta:g}')
        print(f'- training KD student beta={beta:g} -> {work}', flush=True)
        ckpt = train_stage(KD_CONFIG, work, data_root, [
            f'model.compressor.beta={beta}', f'teacher_config={args.teacher_config}',
            f'teacher_checkpoint={args.teacher_checkpoint}'], echo_every=5)
        out.append((f'beta={beta:g}', KD_CONFIG, ckpt))
    return out


def main(argv=None):
    args = parse_args(argv)
    os.chdir(osp.dirname(osp.dirname(osp.abspath(__file__))))
    students = [tuple(s) for s in args.student] + train_students(args, args.data_root)
    codecs = {c: q for c, q in (('jpeg', args.jpeg_qualities), ('webp', args.webp_qualities),
                                ('avif', args.avif_qualities)) if q}
    rows = run_rate_accuracy(args.teacher_config, args.teacher_checkpoint, students, codecs,
                             args.fit_to_input, args.quantize_bits, args.split_after,
                             args.data_root, args.num_images, args.bandwidth, args.bootstrap,
                             [tuple(s) for s in args.variable_rate_student],
                             dynamic_students=[tuple(s) for s in args.system],
                             families=[tuple(f) for f in args.family],
                             family_codecs={'webp': args.family_webp_qualities})
    if args.merge:
        rows = merge_rows(args.merge, rows)
    summary = summarize(rows)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    stem = osp.splitext(args.out)[0]
    with open(args.out, 'w') as f:
        json.dump(dict(rows=rows, summary=summary, bandwidth_mbps=args.bandwidth), f, indent=2)
    text = table(rows, summary, args.bandwidth)
    with open(stem + '.txt', 'w') as f:
        f.write(text + '\n')
    plot(rows, stem + '.png')
    print('\n' + text)
    print(f'\nwritten: {args.out}, {stem}.txt, {stem}.png')
    return rows, summary


if __name__ == '__main__':
    main()
