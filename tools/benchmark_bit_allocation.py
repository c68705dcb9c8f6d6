"""Where the learned codecs spend their bits: inside the objects or on the background.

    python tools/benchmark_bit_allocation.py \
        --student 'KD factorized' configs/ecc_faster_rcnn_r18_synthetic_kd.py STUDENT.pth \
        --student 'KD hyperprior' configs/ecc_faster_rcnn_r18_synthetic_kd_hp.py HP.pth \
        [--data-root DIR] [--num-images 200] [--out work_dirs/benchmarks/bit_allocation.json]

An image codec spends most of its bits on texture, wherever it is; a codec for a detector need
not. For every student this runs the edge on the validation images, takes the compressor's
estimated bits per latent position (``bit_map``: the real bytes match the estimate to ~0.2 %),
rasterises the ground-truth boxes onto the latent grid (fractional coverage of each cell) and
reports: bits per image, the share of the image area inside objects, the share of the bits spent
there, and the ratio of bits per unit area inside vs outside the objects. Writes JSON and a table.
"""
import argparse

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
import torch
import torch.nn.functional as F
from ecc_tools.cli import write_report

from ecc_mmdet.apis.inference import build_detector, build_test_dataset, iter_batches, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--student', nargs=3, action='append', required=True,
                   metavar=('NAME', 'CONFIG', 'CKPT'), help='a trained split student')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=None)
    p.add_argument('--out', default='work_dirs/benchmarks/bit_allocation.json')
    return p.parse_args(argv)


def box_coverage(samples, input_hw, grid_hw) -> torch.Tensor:
    """(N, h, w) fraction of each latent cell covered by ground-truth boxes (input pixels,
    boxes scaled from the original image by the sample's scale factor)."""
    ih, iw = input_hw
    masks = torch.zeros(len(samples), 1, ih, iw)
    for i, s in enumerate(samples):
        sx, sy = s.metainfo.get('scale_factor', (1.0, 1.0))
        for x0, y0, x1, y1 in s.gt_instances.bboxes.tensor.tolist() \
                if hasattr(s.gt_instances.bboxes, 'tensor') else s.gt_instances.bboxes.tolist():
            masks[i, 0, max(0, int(round(y0 * sy))):min(ih, int(round(y1 * sy))),
                  max(0, int(round(x0 * sx))):min(iw, int(round(x1 * sx)))] = 1.0
    return F.adaptive_avg_pool2d(masks, grid_hw)[:, 0]


def allocation(bits: torch.Tensor, cover: torch.Tensor) -> dict:
    """Sums over all images of a bits map and its box coverage -> the report's figures."""
    fg_bits, bg_bits = float((bits * cover).sum()), float((bits * (1 - cover)).sum())
    fg_area, bg_area = float(cover.sum()), float((1 - cover).sum())
    total = fg_bits + bg_bits
    return dict(bits_per_image=total / bits.shape[0],
                object_area_share=fg_area / (fg_area + bg_area),
                object_bits_share=fg_bits / total if total else None,
                object_to_background_bits_per_area=(fg_bits / fg_area) / (bg_bits / bg_area)
                if fg_area and bg_area and bg_bits else None)


def run(name, config, ckpt, data_root=None, num_images=None) -> dict:
    cfg = load_config(config, data_root)
    model = build_detector(cfg.model, ckpt)
    if not callable(getattr(model.compressor, 'bit_map', None)):
        raise SystemExit(f'{name}: {type(model.compressor).__name__} has no learned entropy '
                         'model (bit_map); give a student with a learned bottleneck')
    maps, covers = [], []
    with torch.no_grad():
        for inputs, samples in iter_batches(model, build_test_dataset(cfg), num_images, 8):
            m = model.compressor.bit_map(model.edge_features(inputs))
            maps.append(m)
            covers.append(box_coverage(samples, inputs.shape[-2:], m.shape[-2:]))
    print(f'- {name}: {sum(len(m) for m in maps)} images', flush=True)
    return dict(name=name, codec=model.compressor.codec_name,
                **allocation(torch.cat(maps), torch.cat(covers)))


def table(rows) -> str:
    w = max([34] + [len(r['name']) + 2 for r in rows])
    lines = [f"{'student':<{w}}{'codec':<26}{'bytes/img':>10}{'object area':>12}"
             f"{'object bits':>12}{'bits/area in:out':>18}"]
    for r in rows:
        ratio = r['object_to_background_bits_per_area']
        lines.append(f"{r['name']:<{w}}{r['codec']:<26}{r['bits_per_image'] / 8:>10.0f}"
                     f"{100 * r['object_area_share']:>11.1f}%"
                     f"{100 * (r['object_bits_share'] or 0):>11.1f}%"
                     f"{'-' if ratio is None else f'{ratio:.2f}':>18}")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    rows = [run(n, c, k, args.data_root, args.num_images) for n, c, k in args.student]
    text = table(rows)
    write_report(args.out, dict(rows=rows), text)
    print('\n' + text)
    return rows


if __name__ == '__main__':
    main()
