"""Rate-accuracy benchmark: learned bottleneck vs sending the image (JPEG) vs 8/4-bit features.

    python tools/benchmark_rate_accuracy.py \
        --teacher-config configs/faster_rcnn_r18_fpn_synthetic.py \
        --teacher-checkpoint work_dirs/demo/baseline/epoch_12.pth \
        --student beta=0.05 configs/ecc_faster_rcnn_r18_synthetic_kd.py work_dirs/demo/student/epoch_8.pth \
        [--student NAME CONFIG CKPT ...] [--train-betas 0.01 0.05 0.2] \
        [--jpeg-qualities 5 10 20 40 70 95] [--quantize-bits 8 4] [--data-root DIR] \
        [--out work_dirs/benchmarks/rate_accuracy.json]

In one run, on one dataset (default: the config's synthetic validation set), it evaluates
- the teacher on the original images (accuracy ceiling; nothing transmitted is counted),
- cloud-only: the teacher on JPEG-compressed originals (bytes = JPEG size) at each quality,
- n-bit features: QuantizeNeck at the students' split point, teacher weights, no training,
- learned bottleneck students (given with --student, or trained here with --train-betas),
and writes JSON rows (method, setting, bytes/image, bbox mAP, edge GFLOPs, latency), a table, a
rate-accuracy plot (PNG, bytes on a log axis) and the BD-rate of the learned bottleneck against
JPEG over their common mAP range, plus the check of the targets (best student within 1 mAP point
of the teacher at <= 1/8 the bytes of the cheapest JPEG with that mAP; edge FLOPs <= 15 %).
"""
import argparse
import copy
import json
import os
import os.path as osp
import sys

try:
    import ecc_mmdet  # noqa: F401
except ImportError:
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import ecc_mmdet  # noqa: F401

from ecc_mmdet.apis.evaluation import evaluate_detector
from ecc_mmdet.apis.inference import build_detector, build_test_dataset, load_config
from ecc_mmdet.datasets.transforms import add_jpeg_baseline
from ecc_mmdet.evaluation.bd_rate import bd_rate

KD_CONFIG = 'configs/ecc_faster_rcnn_r18_synthetic_kd.py'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--teacher-config', default='configs/faster_rcnn_r18_fpn_synthetic.py')
    p.add_argument('--teacher-checkpoint', default='work_dirs/demo/baseline/epoch_12.pth')
    p.add_argument('--student', nargs=3, action='append', default=[],
                   metavar=('NAME', 'CONFIG', 'CKPT'), help='a trained split student')
    p.add_argument('--train-betas', type=float, nargs='*', default=[],
                   help=f'train a KD student ({KD_CONFIG}) per beta, reusing finished ones')
    p.add_argument('--students-dir', default='work_dirs/benchmarks/students')
    p.add_argument('--jpeg-qualities', type=int, nargs='*', default=[5, 10, 20, 40, 70, 95])
    p.add_argument('--quantize-bits', type=int, nargs='*', default=[8, 4])
    p.add_argument('--split-after', type=int, default=1,
                   help='split point of the QuantizeNeck baselines (default: the students\')')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=None)
    p.add_argument('--bandwidth', type=float, default=1.0, help='Mbit/s for the latency column')
    p.add_argument('--out', default='work_dirs/benchmarks/rate_accuracy.json')
    return p.parse_args(argv)


def row(method, setting, metrics, bandwidth):
    from ecc_mmdet.evaluation.communication_metric import bandwidth_key
    lat = metrics.get(f'comm/latency_ms_at_{bandwidth_key(bandwidth)}')
    edge, cloud = metrics.get('comm/edge_gflops'), metrics.get('comm/cloud_gflops')
    return dict(method=method, setting=setting,
                bytes_per_image=metrics.get('comm/bytes_per_image_mean', 0.0),
                bbox_mAP=100.0 * metrics['coco/bbox_mAP'],
                bbox_mAP_50=100.0 * metrics['coco/bbox_mAP_50'],
                edge_gflops=edge, cloud_gflops=cloud,
                edge_flops_fraction=metrics.get('comm/edge_flops_fraction'),
                latency_ms=lat, real_to_est=metrics.get('comm/real_to_est_ratio'))


def split_cfg_from(teacher_model_cfg, split_after, compressor):
    from ecc_mmdet.apis.inference import _SPLIT_TYPES
    cfg = copy.deepcopy(teacher_model_cfg)
    two_stage = 'roi_head' in cfg
    cfg['type'] = [k for k, v in _SPLIT_TYPES.items()
                   if v == ('TwoStageDetector' if two_stage else 'SingleStageDetector')][0]
    cfg.update(split_after=split_after, compressor=compressor)
    return cfg


def train_students(args, data_root):
    from ecc_mmdet.apis.workflow import train_stage
    out = []
    for beta in args.train_betas:
        work = osp.join(args.students_dir, f'beta_{beta:g}')
        print(f'- training KD student beta={beta:g} -> {work}', flush=True)
        ckpt = train_stage(KD_CONFIG, work, data_root, [
            f'model.compressor.beta={beta}', f'teacher_config={args.teacher_config}',
            f'teacher_checkpoint={args.teacher_checkpoint}'], echo_every=5)
        out.append((f'beta={beta:g}', KD_CONFIG, ckpt))
    return out


def run(args):
    tcfg = load_config(args.teacher_config, args.data_root)
    ann_file = tcfg.test_evaluator['ann_file'] if isinstance(tcfg.test_evaluator, dict) else \
        tcfg.test_evaluator[0]['ann_file']
    teacher = build_detector(tcfg.model, args.teacher_checkpoint)
    rows = []
    ev = dict(ann_file=ann_file, bandwidth_mbps=[args.bandwidth], num_images=args.num_images)

    print('- teacher on original images', flush=True)
    m = evaluate_detector(teacher, build_test_dataset(tcfg), comm=False, **ev)
    rows.append(row('teacher', 'original image', m, args.bandwidth))

    base_pipeline = tcfg.test_dataloader.dataset.pipeline
    for q in args.jpeg_qualities:
        print(f'- cloud-only JPEG q={q}', flush=True)
        ds = build_test_dataset(tcfg, add_jpeg_baseline(base_pipeline, q))
        rows.append(row('cloud-only JPEG', f'q={q}', evaluate_detector(teacher, ds, **ev),
                        args.bandwidth))

    dataset = build_test_dataset(tcfg)
    for bits in args.quantize_bits:
        print(f'- {bits}-bit features (QuantizeNeck, split_after={args.split_after})', flush=True)
        model = build_detector(split_cfg_from(tcfg.model, args.split_after,
                                              dict(type='QuantizeNeck', n_bits=bits)),
                               args.teacher_checkpoint)
        rows.append(row(f'{bits}-bit features', f'split_after={args.split_after}',
                        evaluate_detector(model, dataset, **ev), args.bandwidth))

    students = [tuple(s) for s in args.student] + train_students(args, args.data_root)
    for name, config, ckpt in students:
        print(f'- learned bottleneck {name}', flush=True)
        scfg = load_config(config, args.data_root)
        model = build_detector(scfg.model, ckpt)
        rows.append(row('learned bottleneck', name,
                        evaluate_detector(model, build_test_dataset(scfg), **ev), args.bandwidth))
    return rows


def summarize(rows):
    teacher = next(r for r in rows if r['method'] == 'teacher')
    jpeg = [r for r in rows if r['method'] == 'cloud-only JPEG']
    learned = [r for r in rows if r['method'] == 'learned bottleneck']
    s = dict(teacher_mAP=teacher['bbox_mAP'])
    if jpeg and learned:
        bd = bd_rate([r['bytes_per_image'] for r in jpeg], [r['bbox_mAP'] for r in jpeg],
                     [r['bytes_per_image'] for r in learned], [r['bbox_mAP'] for r in learned])
        s['bd_rate_learned_vs_jpeg'] = bd
    if learned:
        best = max(learned, key=lambda r: r['bbox_mAP'])
        s['best_learned'] = best['setting']
        s['best_learned_mAP_gap_to_teacher'] = teacher['bbox_mAP'] - best['bbox_mAP']
        reaching = [r for r in jpeg if r['bbox_mAP'] >= best['bbox_mAP']]
        if reaching:
            cheapest = min(reaching, key=lambda r: r['bytes_per_image'])
            s['cheapest_jpeg_reaching_best'] = cheapest['setting']
            s['bytes_ratio_best_learned_to_that_jpeg'] = (best['bytes_per_image']
                                                          / cheapest['bytes_per_image'])
        whole = (best['edge_gflops'] or 0) + (best['cloud_gflops'] or 0)
        s['best_learned_edge_flops_fraction'] = (best['edge_gflops'] / whole) if whole else None
        s['targets'] = dict(
            within_1_mAP_of_teacher=s['best_learned_mAP_gap_to_teacher'] <= 1.0,
            at_most_one_eighth_of_jpeg_bytes=(s.get('bytes_ratio_best_learned_to_that_jpeg')
                                              is not None and
                                              s['bytes_ratio_best_learned_to_that_jpeg'] <= 1 / 8),
            edge_flops_at_most_15pct=(s['best_learned_edge_flops_fraction'] or 1) <= 0.15)
    return s


def _fmt(v, spec):
    if isinstance(v, (int, float)):
        return format(v, spec)
    return format('-', '>' + spec.split('.')[0])


def table(rows, summary, bandwidth) -> str:
    lines = [f"{'method':<20}{'setting':<18}{'KB/image':>10}{'bbox mAP':>10}{'mAP@50':>8}"
             f"{'edge GFLOPs':>12}{f'latency ms @{bandwidth:g}Mb/s':>22}"]
    for r in rows:
        lines.append(f"{r['method']:<20}{r['setting']:<18}"
                     f"{_fmt(r['bytes_per_image'] / 1000, '10.2f')}{r['bbox_mAP']:>10.1f}"
                     f"{r['bbox_mAP_50']:>8.1f}{_fmt(r['edge_gflops'], '12.3f')}"
                     f"{_fmt(r['latency_ms'], '22.1f')}")
    if summary.get('bd_rate_learned_vs_jpeg') is not None:
        lines.append(f"BD-rate learned bottleneck vs cloud-only JPEG: "
                     f"{100 * summary['bd_rate_learned_vs_jpeg']:+.1f} %")
    if 'targets' in summary:
        lines.append('targets: ' + ', '.join(f"{k}: {'met' if v else 'MISSED'}"
                                             for k, v in summary['targets'].items()))
    return '\n'.join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    teacher = next(r for r in rows if r['method'] == 'teacher')
    ax.axhline(teacher['bbox_mAP'], color='k', ls='--', lw=1, label='teacher (original image)')
    styles = {'cloud-only JPEG': 'o-', 'learned bottleneck': 's-', '8-bit features': '^',
              '4-bit features': 'v'}
    for method in dict.fromkeys(r['method'] for r in rows if r['method'] != 'teacher'):
        pts = sorted((r['bytes_per_image'], r['bbox_mAP']) for r in rows if r['method'] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(method, 'x-'), label=method)
    ax.set_xscale('log')
    ax.set_xlabel('uplink bytes per image (log scale)')
    ax.set_ylabel('bbox mAP (COCO, 0-100)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    os.chdir(osp.dirname(osp.dirname(osp.abspath(__file__))))
    rows = run(args)
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
