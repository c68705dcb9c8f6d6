"""Load and fuzz benchmark of the cloud server, on loopback only.

    python tools/benchmark_serving.py CONFIG CHECKPOINT [--data-root DIR] [--num-images 32] \
        [--concurrency 1 4 16] [--requests 96] [--time-limit 120] [--fuzz 600] \
        [--out docs/benchmarks/serving.json]

Phases (each against a fresh ``tools/serve_cloud.py`` subprocess on 127.0.0.1, a free port):

1. batched server (the config's ``serving`` settings): every concurrency level;
2. the same server with ``max_batch_size=1``: the unbatched throughput at the highest level;
3. a server with a small queue (``--retry-queue``) at the highest level: 503s, and the
   client's retries with the same ``Idempotency-Key`` (no image lost or counted twice);
4. ``--fuzz`` hostile payloads (random, truncated, bit-flipped, another model's, oversize,
   forged with a valid checksum) against the batched server.

Every answer is compared with the in-process cloud's detections of the same image (0 lost,
duplicated or mis-assigned), and the bytes sent must equal what ``CommunicationMetric`` reports
for the same images. Writes JSON, a table (.txt) and a plot (.png) beside it; targets in the table's last lines.
"""
import argparse
import json
import os
import platform
import sys
import time

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import write_report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=32, help='distinct images (payloads)')
    p.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16])
    p.add_argument('--requests', type=int, default=96, help='requests per concurrency level')
    p.add_argument('--time-limit', type=float, default=120.0, help='seconds per level')
    p.add_argument('--fuzz', type=int, default=600, help='hostile payloads (0: skip)')
    p.add_argument('--threads', type=int, default=1, help="the server's torch threads")
    p.add_argument('--retry-queue', type=int, default=4,
                   help='server queue of the retry phase (below the highest concurrency)')
    p.add_argument('--out', default='work_dirs/benchmarks/serving.json')
    return p.parse_args(argv)


def run(args):
    import torch
    from ecc_tools import serving_bench as sb
    from ecc_tools.payload_fuzz import fuzz_cases

    torch.set_num_threads(1)
    print(f'[serving] edge side in-process on {args.num_images} images', flush=True)
    model, images = sb.prepare(args.config, args.checkpoint, args.data_root, args.num_images)
    sent = [im for im in images if im['tier'] == 'cloud']
    bytes_metric = sum(im['metric_bytes'] for im in images)
    # every upload the edge makes: feature payloads, and edge-finished images' reports
    bytes_payloads = sum(len(im['payload'] or b'') for im in images)
    token = sb.new_token()
    res = dict(config=args.config, checkpoint=args.checkpoint, num_images=len(images),
               offloaded=len(sent), machine=dict(cpus=os.cpu_count(), python=platform.python_version(),
                                                 server_threads=args.threads),
               bytes=dict(payloads=bytes_payloads, communication_metric=bytes_metric,
                          equal=all(len(im['payload'] or b'') == im['metric_bytes']
                                    for im in images)),
               levels=[], unbatched=None, retry=None, fuzz=None)
    top = max(args.concurrency)
    batch = _serving_limit(args.config, 'max_batch_size')
    torch.set_num_threads(args.threads)
    res['ceiling'] = sb.cloud_ceiling(model, images, batch)
    print(f'[serving] in-process cloud: batch {batch} gains '
          f'{res["ceiling"]["gain"]:.2f}x over batch 1 on this machine', flush=True)
    torch.set_num_threads(1)

    def level(url, c, label, max_retries=8):
        print(f'[serving] {label}: concurrency {c}, {args.requests} requests', flush=True)
        r = sb.drive(url, token, images, c, args.requests, args.time_limit, max_retries)
        print(f'[serving]   {r["images_per_s"]:.1f} img/s, p50 {r["latency_ms"]["p50"]:.1f} ms, '
              f'lost {r["lost"]}, mismatched {r["mismatched"]}', flush=True)
        return r

    with sb.server(args.config, args.checkpoint, token, threads=args.threads) as (url, _):
        for c in args.concurrency:
            res['levels'].append(level(url, c, 'batched'))
        if args.fuzz:
            other = _other_model_payload(model, images)
            cases = fuzz_cases([im['payload'] for im in sent], other, args.fuzz,
                               max_body_bytes=_serving_limit(args.config, 'max_body_bytes'),
                               seed=0)
            print(f'[serving] fuzz: {len(cases)} hostile payloads', flush=True)
            res['fuzz'] = sb.fuzz(url, token, cases)
    with sb.server(args.config, args.checkpoint, token, ['serving.max_batch_size=1'],
                   threads=args.threads) as (url, _):
        res['unbatched'] = level(url, top, 'unbatched')
    # a queue smaller than the clients in flight: 503s, answered by retries (the client's
    # budget is what a camera that must not drop frames would set)
    with sb.server(args.config, args.checkpoint, token, [f'serving.max_queue={args.retry_queue}'],
                   threads=args.threads) as (url, _):
        res['retry'] = level(url, top, f'queue of {args.retry_queue} (retries)', max_retries=40)
    return res


def _serving_limit(config, name):
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.serving.service import ServingConfig
    return getattr(ServingConfig.from_dict(load_config(config).get('serving', None)), name)


def _other_model_payload(model, images):
    """A valid payload of another checkpoint: the same model with perturbed edge weights."""
    import copy

    from ecc_edge.codecs.bitstream import pack, unpack
    other = copy.deepcopy(model)
    import torch
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(1.01)
    p = unpack(next(im['payload'] for im in images if im['tier'] == 'cloud'))
    p.fingerprint = other.model_fingerprint()
    return pack(p)


def table(res) -> str:
    lines = [f'Cloud server load benchmark (loopback; {res["num_images"]} images, '
             f'{res["offloaded"]} offloaded; server torch threads '
             f'{res["machine"]["server_threads"]}, {res["machine"]["cpus"]} CPUs)', '']
    hdr = (f'{"run":<22s}{"conc":>5s}{"img/s":>8s}{"p50":>8s}{"p95":>8s}{"p99":>8s}'
           f'{"edge":>7s}{"enc":>6s}{"net":>6s}{"queue":>7s}{"dec":>6s}{"cloud":>7s}'
           f'{"batch":>6s}{"retry":>6s}{"lost":>5s}{"dup":>4s}{"mis":>4s}')
    lines += [hdr + '   (latencies: end-to-end ms; breakdown: p50 ms)', '-' * len(hdr)]
    runs = [('batched', r) for r in res['levels']]
    runs += [('unbatched', res['unbatched']), ('small queue, retries', res['retry'])]
    for name, r in runs:
        if r is None:
            continue
        b, lat = r['breakdown_ms_p50'], r['latency_ms']
        lines.append(f'{name:<22s}{r["concurrency"]:>5d}{r["images_per_s"]:>8.1f}'
                     f'{lat["p50"]:>8.1f}{lat["p95"]:>8.1f}{lat["p99"]:>8.1f}{b["edge"]:>7.1f}'
                     f'{b["encode"]:>6.1f}{b["network"]:>6.1f}{b["queue"]:>7.1f}'
                     f'{b["decode"]:>6.1f}{b["cloud"]:>7.1f}{r["mean_batch"]:>6.2f}'
                     f'{r["retries"]:>6d}{r["lost"]:>5d}{r["duplicated"]:>4d}'
                     f'{r["mismatched"]:>4d}')
    lines.append('')
    by = res['bytes']
    lines.append(f'bytes on the wire {by["payloads"]} = CommunicationMetric {by["communication_metric"]}: '
                 f'{"yes" if by["equal"] else "NO"}')
    f = res['fuzz']
    if f:
        lines.append(f'fuzz: {f["cases"]} payloads, 5xx {f["server_5xx"]}, hangs {f["hangs"]}, '
                     f'problems {f["num_problems"]}, server alive {f["server_alive"]}; '
                     f'statuses {json.dumps(f["by_kind"], sort_keys=True)}')
        for p in f['problems']:
            lines.append(f'  ! {p}')
    lines += ['', 'Targets:']
    allruns = [r for _, r in runs if r is not None]
    bad = sum(r['lost'] + r['duplicated'] + r['mismatched'] for r in allruns)
    lines.append(f'  0 lost / duplicated / mis-assigned results: {bad} -> '
                 f'{"met" if bad == 0 else "MISSED"}')
    c1 = next((r for r in res['levels'] if r['concurrency'] == 1), None)
    if c1:
        share = c1['server_overhead_ms_p50'] / c1['latency_ms']['p50']
        lines.append(f'  server overhead (HTTP, framing, queueing) at concurrency 1: '
                     f'{c1["server_overhead_ms_p50"]:.1f} ms = {100 * share:.1f} % of p50 '
                     f'{c1["latency_ms"]["p50"]:.1f} ms (<= 10 %) -> '
                     f'{"met" if share <= 0.10 else "MISSED"}')
    top = max(res['levels'], key=lambda r: r['concurrency'])
    if res['unbatched']:
        gain = top['images_per_s'] / res['unbatched']['images_per_s']
        lines.append(f'  batching at concurrency {top["concurrency"]}: {top["images_per_s"]:.1f} vs '
                     f'{res["unbatched"]["images_per_s"]:.1f} img/s unbatched = {gain:.2f}x '
                     f'(>= 1.3x) -> {"met" if gain >= 1.3 else "MISSED"}')
        c = res.get('ceiling')
        if c:
            lines.append(f'    (the model alone, in-process, same threads: batch {c["batch"]} runs '
                         f'{c["gain"]:.2f}x the images/s of batch 1 on this machine)')
    if f:
        ok = f['server_5xx'] == 0 and f['hangs'] == 0 and f['num_problems'] == 0 and \
            f['server_alive'] and f['cases'] >= 500
        lines.append(f'  fuzz (>= 500 payloads; 0 crashes, 5xx, hangs, bad boxes; specific 4xx): '
                     f'{"met" if ok else "MISSED"}')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    res = run(args)
    res['wall_s'] = time.time() - t0
    text = table(res)
    stem = write_report(args.out, res, text, indent=1)
    from ecc_tools.serving_bench import plot
    plot(res, stem + '.png')
    print(text)
    print(f'[serving] wrote {args.out} and its .txt ({res["wall_s"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
