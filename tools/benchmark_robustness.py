"""Robustness of any detector config/checkpoint under COCO-C-style corruptions: mAP per
corruption and severity, mPC and rPC (Michaelis et al. 2019, as mmdet's robustness tool).

    python tools/benchmark_robustness.py CONFIG CHECKPOINT \
        [--corruptions gaussian_noise motion_blur fog ...] [--severities 1 2 3 4 5] \
        [--seed 0] [--data-root DIR] [--num-images N] [--out work_dirs/robustness.json]

Each (corruption, severity) re-evaluates the config's test set with ``CorruptImage`` inserted
right after the image is loaded (seeded per image: reruns give the same corrupted images). A
split (EdgeCloud*) model runs its real deployment path, so the bytes it sends under each
corruption are reported too. Writes JSON, a table and a plot of mAP against severity.

mPC = mean over corruptions and severities of the mAP; rPC = mPC / clean mAP.
"""
import argparse
import os
import os.path as osp

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import write_report

DEFAULT_CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur',
                       'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness',
                       'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression',
                       'glass_blur')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--corruptions', nargs='+', default=list(DEFAULT_CORRUPTIONS))
    p.add_argument('--severities', type=int, nargs='+', default=[1, 2, 3, 4, 5])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int)
    p.add_argument('--out', default='work_dirs/benchmarks/robustness.json')
    return p.parse_args(argv)


def summarize(clean: float, cells: dict) -> dict:
    """``cells``: {corruption: {severity: mAP}} -> mPC, rPC and the per-corruption means."""
    per = {c: sum(v.values()) / len(v) for c, v in cells.items() if v}
    vals = [m for v in cells.values() for m in v.values()]
    mpc = sum(vals) / len(vals) if vals else None
    return dict(clean_mAP=clean, mPC=mpc, rPC=None if mpc is None or not clean else mpc / clean,
                per_corruption_mean=per)


def table(res: dict) -> str:
    sev = res['severities']
    lines = [f"{'corruption':<20}" + ''.join(f'{f"s={s}":>9}' for s in sev) + f"{'mean':>9}"
             + f"{'KB/img':>9}"]
    for c, row in res['mAP'].items():
        kb = res['bytes'].get(c)
        kb = f'{sum(kb.values()) / len(kb) / 1000:9.2f}' if kb else f"{'-':>9}"
        lines.append(f'{c:<20}' + ''.join(f'{row[str(s)]:9.1f}' for s in sev)
                     + f"{res['summary']['per_corruption_mean'][c]:9.1f}" + kb)
    s = res['summary']
    rpc = 'n/a (clean mAP is 0)' if s['rPC'] is None else f"{100 * s['rPC']:.1f} %"
    lines.append(f"clean mAP {s['clean_mAP']:.1f}; mPC {s['mPC']:.1f}; rPC {rpc}")
    return '\n'.join(lines)


#: one marker per corruption (with the 10 colours, 15 corruptions stay apart)
MARKERS = 'osD^vP*Xph<>dH8'


def plot(res: dict, path: str, title=None) -> None:
    """mAP against severity, one line per corruption, from the clean mAP at severity 0."""
    from ecc_tools.plotting import legend_beside, pyplot, save
    fig, ax = pyplot().subplots(figsize=(6.4, 4.4))
    sev, s = [0] + res['severities'], res['summary']
    for k, (c, row) in enumerate(res['mAP'].items()):
        ax.plot(sev, [s['clean_mAP']] + [row[str(v)] for v in res['severities']],
                marker=MARKERS[k % len(MARKERS)], ms=5, ls='-' if k < 10 else '--',
                label=f"{c}: {s['per_corruption_mean'][c]:.1f}")
    ax.set_xticks(sev)
    ax.set_xlabel('corruption severity (0 = clean image)')
    ax.set_ylabel('bbox mAP (COCO, %)')
    rpc = '' if s['rPC'] is None else f", rPC {100 * s['rPC']:.0f} %"
    ax.set_title(title or f"Robustness of {osp.basename(res['config'])}\n"
                 f"clean {s['clean_mAP']:.1f} mAP, mPC {s['mPC']:.1f}{rpc}", fontsize=10)
    ax.grid(True, alpha=0.3)
    legend_beside(ax, title='corruption (mean mAP)', title_fontsize=8)
    save(fig, path)


def main(argv=None):
    args = parse_args(argv)
    from ecc_mmdet.apis import (build_detector, build_test_dataset, evaluate_detector,
                                load_config)
    from ecc_mmdet.datasets.transforms import CORRUPTIONS, add_corruption
    bad = [c for c in args.corruptions if c not in CORRUPTIONS]
    if bad or any(not 1 <= s <= 5 for s in args.severities):
        raise SystemExit(f'error: unknown corruption(s) {bad} (choose from '
                         f'{", ".join(CORRUPTIONS)}) or a severity outside 1..5: '
                         f'{args.severities}')
    cfg = load_config(args.config, args.data_root)
    ev = cfg.test_evaluator
    ann_file = ev['ann_file'] if isinstance(ev, dict) else ev[0]['ann_file']
    model = build_detector(cfg.model, args.checkpoint)
    split = hasattr(model, 'compressor')
    if split:
        model.measure_flops = model.estimate_rate = False
    pipeline = cfg.test_dataloader.dataset.pipeline

    def run(dataset):
        m = evaluate_detector(model, dataset, ann_file=ann_file, comm=split,
                              num_images=args.num_images, progress=False)
        # CocoMetric returns nothing when the detector found nothing at all (heavy corruption)
        return 100.0 * m.get('coco/bbox_mAP', 0.0), m.get('comm/bytes_per_image_mean')

    print('- clean', flush=True)
    clean, clean_bytes = run(build_test_dataset(cfg))
    maps, nbytes = {}, {}
    for c in args.corruptions:
        maps[c], nbytes[c] = {}, {}
        for s in args.severities:
            m, b = run(build_test_dataset(cfg, add_corruption(pipeline, c, s, args.seed)))
            maps[c][str(s)] = m
            if b is not None:
                nbytes[c][str(s)] = b
            print(f'- {c} severity {s}: mAP {m:.1f}'
                  + (f', {b / 1000:.2f} KB/image' if b is not None else ''), flush=True)
    res = dict(config=args.config, checkpoint=args.checkpoint, seed=args.seed,
               severities=args.severities, num_images=args.num_images, clean_bytes=clean_bytes,
               mAP=maps, bytes={c: v for c, v in nbytes.items() if v},
               summary=summarize(clean, {c: {int(k): v for k, v in row.items()}
                                         for c, row in maps.items()}))
    text = table(res)
    stem = write_report(args.out, res, text)
    plot(res, stem + '.png')
    print('\n' + text + f'\n\nwritten: {args.out}, {stem}.txt, {stem}.png')
    return res


if __name__ == '__main__':
    os.chdir(osp.dirname(osp.dirname(osp.abspath(__file__))))
    main()
