"""Codec cost, split-vs-unsplit throughput and real-vs-estimated bytes, measured in one run.

    python tools/benchmark_codec.py CONFIG CHECKPOINT [--data-root DIR] [--num-images 100]
        [--out work_dirs/benchmarks/codec.json]

CONFIG is a split (EdgeCloud*) config and CHECKPOINT a checkpoint of it. The unsplit detector is
built from the same config with the same weights (the compressor dropped). Images are processed
one at a time, split and unsplit interleaved, after a short warm-up, so both see the same machine
load. Targets (checked here, never in tests): codec time <= 10 % of split inference time; split
throughput >= 0.9x unsplit; real body bytes <= 1.03 x estimate (the header is reported apart).
"""
import argparse
import statistics
import time

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import write_report
import torch

from ecc_mmdet.apis.inference import (build_detector, build_test_dataset, iter_batches,
                                      load_config, unsplit_model_cfg)
from ecc_mmdet.structures import read as read_comm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--data-root', help='dataset root (default: the config\'s)')
    p.add_argument('--num-images', type=int, default=100)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--out', default='work_dirs/benchmarks/codec.json')
    return p.parse_args(argv)


def _ms(xs):
    return 1000.0 * statistics.mean(xs)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _build(args):
    """The split detector of the config, the unsplit one with the same weights, the dataset."""
    cfg = load_config(args.config, args.data_root)
    split = build_detector(cfg.model, args.checkpoint)
    if not hasattr(split, 'compressor'):
        raise SystemExit(f'{args.config} is not a split (EdgeCloud*) detector config')
    unsplit = build_detector(unsplit_model_cfg(cfg.model), args.checkpoint, partial='split')
    # accounting extras (FLOP counting, the entropy model's bit estimate) are not deployment
    split.measure_flops = split.estimate_rate = False
    return split, unsplit, build_test_dataset(cfg)


def _measure(split, unsplit, inputs, samples) -> dict:
    """One image: split and unsplit inference, the codec alone, the entropy coding alone (when
    the compressor has one), real and estimated bytes."""
    comp = split.compressor
    s_samples = [s.clone() for s in samples]
    results, t_split = timed(split.predict, inputs, s_samples)
    _, t_unsplit = timed(unsplit.predict, inputs, [s.clone() for s in samples])
    f = split.splitter.forward_edge(inputs)
    parts, t_enc = timed(comp.compress, f)
    params, body, shape = parts[0]
    _, t_dec = timed(comp.decompress, params, body, shape)
    t_ec_enc = t_ec_dec = None
    if hasattr(comp, 'entropy_model') and hasattr(comp, 'g_a'):
        y = comp.g_a(f)
        bodies, t_ec_enc = timed(comp.entropy_model.compress, y)
        _, t_ec_dec = timed(comp.entropy_model.decompress, bodies, y.shape[-2:])
    rec = read_comm(results[0])
    est_bits = float(comp.estimate_bits(f)[0])
    return dict(
        t_split=t_split, t_unsplit=t_unsplit, t_enc=t_enc, t_dec=t_dec,
        t_ec_enc=t_ec_enc, t_ec_dec=t_ec_dec, payload=rec.payload_bytes,
        header=rec.header_bytes, body=rec.payload_bytes - rec.header_bytes,
        est_body=est_bits / 8.0)


def _summary(args, codec_name: str, rows) -> dict:
    """Means over the measured images, the ratios and whether the targets are met."""
    col = {k: [r[k] for r in rows] for k in rows[0]}
    codec_ms = _ms(col['t_enc']) + _ms(col['t_dec'])
    split_ms, unsplit_ms = _ms(col['t_split']), _ms(col['t_unsplit'])
    res = dict(
        config=args.config, checkpoint=args.checkpoint, num_images=len(rows),
        codec=codec_name, threads=torch.get_num_threads(),
        split_ms_per_image=split_ms, unsplit_ms_per_image=unsplit_ms,
        split_throughput_ips=1000.0 / split_ms, unsplit_throughput_ips=1000.0 / unsplit_ms,
        throughput_ratio=unsplit_ms / split_ms,
        codec_encode_ms=_ms(col['t_enc']), codec_decode_ms=_ms(col['t_dec']),
        codec_share_of_inference=codec_ms / split_ms,
        payload_bytes_mean=statistics.mean(col['payload']),
        header_bytes_mean=statistics.mean(col['header']),
        body_bytes_mean=statistics.mean(col['body']),
        est_body_bytes_mean=statistics.mean(col['est_body']),
        real_to_est_body_ratio=sum(col['body']) / sum(col['est_body']),
    )
    if rows[0]['t_ec_enc'] is not None:
        res.update(entropy_coding_encode_ms=_ms(col['t_ec_enc']),
                   entropy_coding_decode_ms=_ms(col['t_ec_dec']),
                   entropy_coding_share_of_inference=(_ms(col['t_ec_enc']) + _ms(col['t_ec_dec']))
                   / split_ms)
    res['targets'] = dict(
        codec_share_le_10pct=res['codec_share_of_inference'] <= 0.10,
        throughput_ratio_ge_0p9=res['throughput_ratio'] >= 0.9,
        real_within_3pct_of_estimate=res['real_to_est_body_ratio'] <= 1.03)
    return res


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    split, unsplit, dataset = _build(args)
    rows = []
    with torch.no_grad():
        for i, (inputs, samples) in enumerate(iter_batches(split, dataset, args.num_images
                                                           + args.warmup)):
            row = _measure(split, unsplit, inputs, samples)
            if i >= args.warmup:  # warm-up images are measured in full, then dropped
                rows.append(row)
    return _summary(args, split.compressor.codec_name, rows)


def table(res) -> str:
    ok = {True: 'met', False: 'MISSED'}
    t = res['targets']
    lines = [
        f"Codec benchmark: {res['codec']}, {res['num_images']} images, {res['threads']} threads",
        f"{'figure':<44}{'value':>12}  target",
        f"{'split inference (ms/image)':<44}{res['split_ms_per_image']:>12.1f}",
        f"{'unsplit inference, same weights (ms/image)':<44}{res['unsplit_ms_per_image']:>12.1f}",
        f"{'throughput split / unsplit':<44}{res['throughput_ratio']:>12.3f}  >= 0.9 "
        f"({ok[t['throughput_ratio_ge_0p9']]})",
        f"{'neck encode (g_a + coding) ms':<44}{res['codec_encode_ms']:>12.2f}",
        f"{'neck decode (coding + g_s) ms':<44}{res['codec_decode_ms']:>12.2f}",
        f"{'neck codec share of split inference':<44}{100 * res['codec_share_of_inference']:>11.1f}%"
        f"  <= 10% ({ok[t['codec_share_le_10pct']]})",
    ]
    if 'entropy_coding_encode_ms' in res:
        lines += [
            f"{'entropy coding only: encode / decode ms':<44}"
            f"{res['entropy_coding_encode_ms']:>5.2f} / {res['entropy_coding_decode_ms']:.2f}",
            f"{'entropy coding share of split inference':<44}"
            f"{100 * res['entropy_coding_share_of_inference']:>11.1f}%"]
    lines += [
        f"{'payload bytes / image (mean)':<44}{res['payload_bytes_mean']:>12.1f}",
        f"{'  of which header + checksum':<44}{res['header_bytes_mean']:>12.1f}",
        f"{'body bytes real / estimated (mean)':<44}{res['body_bytes_mean']:>6.1f} / "
        f"{res['est_body_bytes_mean']:.1f}",
        f"{'real / estimated body':<44}{res['real_to_est_body_ratio']:>12.4f}  <= 1.03 "
        f"({ok[t['real_within_3pct_of_estimate']]})",
    ]
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    text = table(res)
    write_report(args.out, res, text, indent=2)
    print(text)
    print(f'\nwritten: {args.out}')


if __name__ == '__main__':
    main()
