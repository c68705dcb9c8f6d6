"""Rate-accuracy comparison: learned bottleneck vs sending the image (JPEG) vs n-bit features.

The engine of ``tools/benchmark_rate_accuracy.py`` and of the demo's comparison table (the
project's acceptance targets, tables and plots live here, with the tools, not in the library):
evaluates
the teacher (original images), the teacher on JPEG-compressed originals, QuantizeNeck features at
the students' split point (teacher weights, no training) and trained students, on one dataset,
with the same CocoMetric + CommunicationMetric, and summarises the result against the targets.
"""
from typing import List, Optional, Sequence, Tuple

from ecc_mmdet.apis import (build_detector, build_test_dataset, evaluate_detector, load_config,
                            split_model_cfg)
from ecc_mmdet.datasets.transforms import add_jpeg_baseline
from ecc_mmdet.evaluation import bandwidth_key
from ecc_mmdet.evaluation.bd_rate import bd_rate


def row(method, setting, metrics, bandwidth):
    """One result row from an evaluator's metrics dict."""
    lat = metrics.get(f'comm/latency_ms_at_{bandwidth_key(bandwidth)}')
    edge, cloud = metrics.get('comm/edge_gflops'), metrics.get('comm/cloud_gflops')
    return dict(method=method, setting=setting,
                bytes_per_image=metrics.get('comm/bytes_per_image_mean', 0.0),
                bbox_mAP=100.0 * metrics['coco/bbox_mAP'],
                bbox_mAP_50=100.0 * metrics['coco/bbox_mAP_50'],
                edge_gflops=edge, cloud_gflops=cloud,
                edge_flops_fraction=metrics.get('comm/edge_flops_fraction'),
                latency_ms=lat, real_to_est=metrics.get('comm/real_to_est_ratio'))


def run_rate_accuracy(teacher_config: str, teacher_checkpoint: str,
                      students: Sequence[Tuple[str, str, str]] = (),
                      jpeg_qualities: Sequence[int] = (5, 10, 20, 40, 70, 95),
                      quantize_bits: Sequence[int] = (8, 4), split_after: int = 1,
                      data_root: Optional[str] = None, num_images: Optional[int] = None,
                      bandwidth: float = 1.0) -> List[dict]:
    """Evaluate every method; ``students`` are (name, config, checkpoint) of trained students."""
    tcfg = load_config(teacher_config, data_root)
    ann_file = tcfg.test_evaluator['ann_file'] if isinstance(tcfg.test_evaluator, dict) else \
        tcfg.test_evaluator[0]['ann_file']
    teacher = build_detector(tcfg.model, teacher_checkpoint)
    rows = []
    ev = dict(ann_file=ann_file, bandwidth_mbps=[bandwidth], num_images=num_images)

    print('- teacher on original images', flush=True)
    m = evaluate_detector(teacher, build_test_dataset(tcfg), comm=False, **ev)
    rows.append(row('teacher', 'original image', m, bandwidth))

    base_pipeline = tcfg.test_dataloader.dataset.pipeline
    for q in jpeg_qualities:
        print(f'- cloud-only JPEG q={q}', flush=True)
        ds = build_test_dataset(tcfg, add_jpeg_baseline(base_pipeline, q))
        rows.append(row('cloud-only JPEG', f'q={q}', evaluate_detector(teacher, ds, **ev),
                        bandwidth))

    dataset = build_test_dataset(tcfg)
    for bits in quantize_bits:
        print(f'- {bits}-bit features (QuantizeNeck, split_after={split_after})', flush=True)
        model = build_detector(split_model_cfg(tcfg.model, split_after,
                                               dict(type='QuantizeNeck', n_bits=bits)),
                               teacher_checkpoint)
        rows.append(row(f'{bits}-bit features', f'split_after={split_after}',
                        evaluate_detector(model, dataset, **ev), bandwidth))

    for name, config, ckpt in students:
        print(f'- learned bottleneck {name}', flush=True)
        scfg = load_config(config, data_root)
        model = build_detector(scfg.model, ckpt)
        rows.append(row('learned bottleneck', name,
                        evaluate_detector(model, build_test_dataset(scfg), **ev), bandwidth))
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
    width = max([18] + [len(r['setting']) + 2 for r in rows])
    lines = [f"{'method':<20}{'setting':<{width}}{'KB/image':>10}{'bbox mAP':>10}{'mAP@50':>8}"
             f"{'edge GFLOPs':>12}{f'latency ms @{bandwidth:g}Mb/s':>22}"]
    for r in rows:
        lines.append(f"{r['method']:<20}{r['setting']:<{width}}"
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
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())  # labels only at decades: no overlap
    ax.set_xlabel('uplink bytes per image (log scale)')
    ax.set_ylabel('bbox mAP (COCO, 0-100)')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
