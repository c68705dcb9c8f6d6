"""The light edge runtime against the PyTorch edge on this CPU: equivalence, latency, memory,
installed size.

    python tools/benchmark_light_edge.py CONFIG CHECKPOINT [--data-root DIR] [--num-images 100] \
        [--out docs/benchmarks/light_edge.json]

1. exports the edge (``tools/export_edge_onnx.py``'s code) into a temporary folder;
2. per validation image: the light runtime's payload and the PyTorch edge's; the quantised
   symbols compared element by element; both payloads decoded by the same PyTorch cloud and
   scored with COCO mAP; the light runtime's preprocessing compared with mmdet's;
3. latency per image, single thread, both edges on the same images (load + preprocess + graph or
   edge stages + entropy coding + framing), best of ``--repeats``;
4. peak resident memory of a fresh process running each edge over the images;
5. installed size of each edge's Python dependencies (the distributions it imports, with their
   requirements), from the installed files.
Writes JSON and a table; the issue's targets in its last lines.

A dynamic model (edge exit + router) is calibrated first as ``tools/export_edge_onnx.py`` does
(its config's calibration split under ``--data-root``), and step 2 compares the two dynamic
systems: per image the router decisions of both edges (router agreement), the edge detections
of images both keep on the edge, the symbols of images both offload, and the COCO mAP of each
system (its edge-finished detections + the PyTorch cloud's answer to its offloaded payloads).
"""
import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import write_report

LIGHT_DISTS = ('onnxruntime', 'numpy', 'opencv-python', 'constriction', 'httpx')
FULL_DISTS = ('torch', 'mmcv', 'mmdet', 'mmengine', 'numpy', 'opencv-python', 'constriction',
              'pycocotools', 'httpx')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--data-root')
    p.add_argument('--num-images', type=int, default=100)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', default='work_dirs/benchmarks/light_edge.json')
    return p.parse_args(argv)


def installed_size(roots):
    """Bytes on disk of the distributions ``roots`` and everything they require (markers and
    extras ignored: an upper bound of what must be installed)."""
    from importlib import metadata
    seen, stack, total, names = set(), list(roots), 0, []
    while stack:
        name = re.split(r'[\s<>=!~;\[(]', stack.pop(), maxsplit=1)[0].strip().lower()
        key = name.replace('_', '-')
        if not key or key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        size = 0
        for f in dist.files or ():
            try:
                size += os.path.getsize(dist.locate_file(f))
            except OSError:
                pass
        total += size
        names.append((dist.metadata['Name'], size))
        for req in dist.requires or ():
            if 'extra ==' not in req:
                stack.append(req)
    return total, sorted(names, key=lambda x: -x[1])


# VmHWM (this process image's peak RSS), not ru_maxrss: Linux carries ru_maxrss over fork and
# exec, so a child of a big parent would report the parent's size
_PEAK = """
import re, sys
paths = sys.argv[2:]
{setup}
for p in paths:
    {step}
print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))
"""


def peak_memory_kb(setup: str, step: str, paths, cwd: str) -> int:
    code = _PEAK.format(setup=setup, step=step)
    out = subprocess.run([sys.executable, '-c', code, 'x', *paths], cwd=cwd, text=True,
                         capture_output=True, timeout=900,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    m = re.search(r'PEAK_KB (\d+)', out.stdout)
    if not m:
        raise RuntimeError(f'memory probe failed:\n{out.stderr[-2000:]}')
    return int(m.group(1))


def _export(args):
    """The model (calibrated when dynamic) and its edge exported into a temporary folder
    -> (cfg, model, graph, sidecar, ONNX-vs-torch max latent difference, light edge)."""
    from ecc_edge.runtime import LightEdge
    from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
    from ecc_mmdet.serving.runtime import class_names_of

    from export_edge_onnx import load_model
    cfg, model = load_model(argparse.Namespace(config=args.config, checkpoint=args.checkpoint,
                                               data_root=args.data_root,
                                               allow_partial_checkpoint=False))
    tmp = tempfile.mkdtemp(prefix='light_edge_')
    graph, sidecar = export_edge_onnx(model, cfg, tmp, class_names_of(cfg))
    max_diff = check_graph(graph, model)
    return cfg, model, graph, sidecar, max_diff, LightEdge(graph, sidecar, threads=1)


def _static_equivalence(model, light, dataset, n, evals) -> dict:
    """The light and the PyTorch edge of a static model on the first ``n`` images: inputs,
    quantised symbols and payloads compared, both payloads decoded and scored in ``evals``."""
    import numpy as np
    import torch

    from ecc_edge.codecs import unpack
    from ecc_mmdet.apis import iter_batches
    eq = dict(agree=0, total=0, equal_payloads=0, equal_inputs=0, paths=[], bytes_light=0,
              bytes_torch=0)
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset, n, 1):
            path = samples[0].img_path
            eq['paths'].append(path)
            x, _ = light.preprocess(light.read(path))
            eq['equal_inputs'] += int(np.array_equal(x, inputs.numpy()))
            res = light.process(path)
            ref = model.encode(inputs, [s.clone() for s in samples])[0]
            p, q = unpack(res.payload), unpack(ref)
            _count_symbols(model, inputs, res, ref, eq)
            assert p.meta == q.meta and p.latent_shape == q.latent_shape
            eq['bytes_light'] += len(res.payload)
            eq['bytes_torch'] += len(ref)
            evals['light'].process(data_samples=model.decode_and_predict(
                [res.payload], [s.clone() for s in samples]))
            evals['pytorch'].process(data_samples=model.decode_and_predict(
                [ref], [s.clone() for s in samples]))
    return eq


def _latency(args, cfg, model, light, paths, dynamic: bool) -> dict:
    """ms per image of each edge over ``paths``, one list entry per repeat."""
    from ecc_mmdet.serving.client import EdgeRunner
    print('[light] latency, single thread', flush=True)
    # the model the export used (a dynamic one is calibrated: EdgeRunner would refuse the
    # checkpoint alone, whose router has no threshold yet)
    runner = EdgeRunner(cfg, None, model=model)
    lat = {'light': [], 'pytorch': []}
    for _ in range(args.repeats):
        for k, fn in (('light', lambda p: light.process(p)),
                      ('pytorch', lambda p: runner.process(p, 0))):
            t0 = time.perf_counter()
            for pth in paths:
                fn(pth)
            lat[k].append((time.perf_counter() - t0) / len(paths) * 1e3)
    return lat


def _peak_memory(args, graph, sidecar, paths, dynamic: bool) -> dict:
    """Peak resident KB of a fresh process running each edge over ``paths``."""
    print('[light] peak memory (fresh processes)', flush=True)
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    return dict(
        light=peak_memory_kb(f'from ecc_edge.runtime import LightEdge\n'
                             f'e = LightEdge({graph!r}, threads=1)', 'e.process(p)', paths, repo),
        pytorch=peak_memory_kb(
            f'sys.path.insert(0, {osp.join(repo, "tools")!r})\nimport ecc_tools\n'
            f'import torch; torch.set_num_threads(1)\n'
            f'from ecc_mmdet.serving.client import EdgeRunner\n' + (_CALIBRATED.format(
                config=args.config, checkpoint=args.checkpoint, sidecar=sidecar) if dynamic else
                f'r = EdgeRunner({args.config!r}, {args.checkpoint!r})'),
            'r.process(p, 0)', paths, repo))


_EQUIVALENCE_KEYS = ('agree', 'total', 'equal_payloads', 'equal_inputs', 'paths', 'bytes_light',
                     'bytes_torch')


def run(args):
    import torch
    from mmengine.evaluator import Evaluator

    from ecc_mmdet.apis import build_test_dataset
    torch.set_num_threads(1)
    cfg, model, graph, sidecar, max_diff, light = _export(args)
    dynamic = light.exit is not None
    dataset = build_test_dataset(cfg)
    ann = cfg.test_evaluator[0]['ann_file'] if isinstance(cfg.test_evaluator, list) else \
        cfg.test_evaluator['ann_file']
    evals = {}
    for k in ('pytorch', 'light'):
        evals[k] = Evaluator([dict(type='CocoMetric', ann_file=ann, metric='bbox')])
        evals[k].dataset_meta = dataset.metainfo
    n = min(args.num_images, len(dataset))
    print(f'[light] equivalence on {n} images', flush=True)
    dyn = None
    if dynamic:
        dyn = dynamic_equivalence(model, light, dataset, n, evals)
        eq = {k: dyn.pop(k) for k in _EQUIVALENCE_KEYS}
    else:
        eq = _static_equivalence(model, light, dataset, n, evals)
    maps = {k: 100 * e.evaluate(n)['coco/bbox_mAP'] for k, e in evals.items()}
    lat = _latency(args, cfg, model, light, eq['paths'], dynamic)
    mem = _peak_memory(args, graph, sidecar, eq['paths'], dynamic)
    size = {k: installed_size(d) for k, d in (('light', LIGHT_DISTS), ('pytorch', FULL_DISTS))}
    agree, total = eq['agree'], eq['total']
    return dict(config=args.config, checkpoint=args.checkpoint, num_images=n,
                graph_bytes=osp.getsize(graph), onnx_vs_torch_max_abs_latent=max_diff,
                symbols=dict(total=total, agree=agree, rate=agree / total if total else 1.0),
                equal_payloads=eq['equal_payloads'], equal_inputs=eq['equal_inputs'],
                bytes_per_image=dict(light=eq['bytes_light'] / n, pytorch=eq['bytes_torch'] / n),
                mAP=maps, latency_ms={k: min(v) for k, v in lat.items()}, latency_runs_ms=lat,
                peak_memory_mb={k: v / 1024 for k, v in mem.items()},
                installed_mb={k: v[0] / 2**20 for k, v in size.items()},
                installed_top={k: [(n_, s / 2**20) for n_, s in v[1][:8]]
                               for k, v in size.items()}, dynamic=dyn)


# the fresh PyTorch edge of the memory probe gets the exported calibration (threshold, maps)
# a dynamic model with the export's calibration (EdgeRunner refuses an uncalibrated router)
_CALIBRATED = """
import json
from ecc_mmdet.apis import build_detector, load_config
from ecc_mmdet.evaluation.score_calibration import ScoreMap
cfg = load_config({config!r})
model = build_detector(cfg.model, {checkpoint!r})
side = json.load(open({sidecar!r}))
model.router.threshold.fill_(float(side['router']['threshold']))
maps = side['score_maps']
model.score_maps = None if maps is None else {{k: ScoreMap(v['x'], v['y'])
                                              for k, v in maps.items()}}
r = EdgeRunner(cfg, None, model=model)"""


def _torch_symbols(model, inputs):
    """The PyTorch edge's quantised symbols of one image: what the light runtime's must equal
    (a hyperprior's: y's around the exact means, then z's, flattened)."""
    import numpy as np
    import torch
    comp = model.compressor
    f = model.edge_features(inputs)
    point = comp._rate_point(False)
    y = comp._latent(f, *point)
    if not hasattr(comp, 'h_a'):
        med = comp._coder(*point)._medians().view(1, -1, 1, 1)
        return torch.round(y - med).to(torch.int32)[0].numpy()
    z = comp.h_a(y)
    z_hat, _ = comp.hyper_entropy_model(z, training=False)
    means, _ = comp._exact_code(y, z_hat)  # a channel context's include its corrections
    z_sym = torch.round(z_hat - comp.hyper_entropy_model._medians().view(1, -1, 1, 1))
    return np.concatenate([torch.round(y - means).to(torch.int32)[0].numpy().ravel(),
                           z_sym.to(torch.int32)[0].numpy().ravel()])


def _count_symbols(model, inputs, res, ref: bytes, eq: dict) -> None:
    """Fold one image's symbol and payload comparison (light ``res`` vs PyTorch ``ref``) into
    ``eq``."""
    import numpy as np
    sym = _torch_symbols(model, inputs)
    if res.side_symbols is not None:
        res = res._replace(symbols=np.concatenate([res.symbols.ravel(),
                                                   res.side_symbols.ravel()]))
    eq['agree'] += int((sym == res.symbols).sum())
    eq['total'] += sym.size
    eq['equal_payloads'] += int(res.payload == ref)


def _as_data_sample(d, sample):
    """The light edge's detections ``d`` as an mmdet data sample, for the COCO metric."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    ds = DetDataSample(metainfo=sample.metainfo)
    ds.pred_instances = InstanceData(bboxes=torch.from_numpy(d.bboxes),
                                     scores=torch.from_numpy(d.scores),
                                     labels=torch.from_numpy(d.labels))
    return ds


def _compare_edge_detections(inst, d, c: dict) -> None:
    """Fold an image both edges finished (PyTorch ``inst``, light ``d``) into the counters
    ``c``: same labels in the same order, then the largest box and score differences."""
    import numpy as np
    if len(inst) != len(d.labels) or not np.array_equal(inst.labels.numpy(), d.labels):
        return
    c['same_dets'] += 1
    if len(inst):
        c['box_diff'] = max(c['box_diff'], float(abs(inst.bboxes.numpy() - d.bboxes).max()))
        c['score_diff'] = max(c['score_diff'], float(abs(inst.scores.numpy() - d.scores).max()))


def _dynamic_image(model, light, inputs, samples, st: dict, c: dict):
    """One image through both dynamic systems, counted into ``st`` and ``c``
    -> (light system's predictions, PyTorch system's predictions)."""
    import numpy as np
    from ecc_mmdet.deployment.pipeline import run_edge
    path, img_id = samples[0].img_path, samples[0].img_id
    st['paths'].append(path)
    x, _ = light.preprocess(light.read(path))
    st['equal_inputs'] += int(np.array_equal(x, inputs.numpy()))
    res = light.process(path, img_id)
    out = run_edge(model, inputs, [s.clone() for s in samples])
    tier = out.tiers[0]
    c['same_tier'] += int(res.tier == tier)
    c['off_light'] += int(res.tier == 'cloud')
    c['off_torch'] += int(tier == 'cloud')
    if res.tier != tier:
        c['score_gaps'].append(abs(res.router_score - c['threshold']))
    if tier == 'cloud':
        pt = model.decode_and_predict([out.payloads[0]], [s.clone() for s in samples])
    else:
        pt = [out.results[0]]
    st['bytes_torch'] += len(out.payloads[0] or b'')
    st['bytes_light'] += len(res.payload or b'')
    if res.tier != 'cloud':
        if tier != 'cloud':
            c['both_edge'] += 1
            _compare_edge_detections(out.results[0].pred_instances, res.detections, c)
        return [_as_data_sample(res.detections, samples[0])], pt
    lt = model.decode_and_predict([res.payload], [s.clone() for s in samples])
    if tier == 'cloud':
        _count_symbols(model, inputs, res, out.payloads[0], st)
        c['both_cloud'] += 1
    return lt, pt


def dynamic_equivalence(model, light, dataset, n, evals):
    """The light and the PyTorch dynamic systems on the first ``n`` images, one at a time."""
    import torch

    from ecc_mmdet.apis import iter_batches
    st = dict(agree=0, total=0, equal_payloads=0, equal_inputs=0, paths=[], bytes_light=0,
              bytes_torch=0)
    # score_gaps: |router score - threshold| of the images the two edges route differently
    c = dict(same_tier=0, off_light=0, off_torch=0, both_edge=0, both_cloud=0, same_dets=0,
             box_diff=0.0, score_diff=0.0, score_gaps=[], threshold=float(model.router.threshold))
    with torch.no_grad():
        for (inputs, samples), _ in zip(iter_batches(model, dataset, n, 1), range(n)):
            lt, pt = _dynamic_image(model, light, inputs, samples, st, c)
            evals['light'].process(data_samples=lt)
            evals['pytorch'].process(data_samples=pt)
    st.update(compared_payloads=c['both_cloud'], router_agreement=c['same_tier'] / n,
              offload_ratio=dict(light=c['off_light'] / n, pytorch=c['off_torch'] / n),
              router=light.router, score_maps=light.score_maps is not None,
              edge_images_both=c['both_edge'], edge_detections_identical_sets=c['same_dets'],
              edge_max_abs_box_diff_px=c['box_diff'], edge_max_abs_score_diff=c['score_diff'],
              disagreeing_router_score_gaps=c['score_gaps'])
    return st


def table(r) -> str:
    s = r['symbols']
    lat, mem, size = r['latency_ms'], r['peak_memory_mb'], r['installed_mb']
    lines = [
        f'Light edge runtime (ONNX Runtime) vs PyTorch edge, {r["num_images"]} images, '
        'single thread', '',
        f'{"":28s}{"light":>12s}{"pytorch":>12s}{"ratio":>9s}',
        f'{"latency ms/image":28s}{lat["light"]:>12.2f}{lat["pytorch"]:>12.2f}'
        f'{lat["light"] / lat["pytorch"]:>9.2f}',
        f'{"peak memory MB":28s}{mem["light"]:>12.0f}{mem["pytorch"]:>12.0f}'
        f'{mem["light"] / mem["pytorch"]:>9.2f}',
        f'{"installed deps MB":28s}{size["light"]:>12.0f}{size["pytorch"]:>12.0f}'
        f'{size["light"] / size["pytorch"]:>9.3f}',
        f'{"bbox mAP (PyTorch cloud)":28s}{r["mAP"]["light"]:>12.2f}{r["mAP"]["pytorch"]:>12.2f}',
        f'{"bytes/image":28s}{r["bytes_per_image"]["light"]:>12.1f}'
        f'{r["bytes_per_image"]["pytorch"]:>12.1f}', '',
        f'symbols equal: {s["agree"]}/{s["total"]} = {100 * s["rate"]:.4f} %; payloads '
        f'byte-identical: {r["equal_payloads"]}/'
        f'{(r.get("dynamic") or {}).get("compared_payloads", r["num_images"])}; '
        f'network inputs identical: '
        f'{r["equal_inputs"]}/{r["num_images"]}; max |latent diff| '
        f'{r["onnx_vs_torch_max_abs_latent"]:.1e}',
        ] + _dynamic_lines(r) + ['', 'Targets:']
    ratio = lat['light'] / lat['pytorch']
    lines.append(f'  latency <= 0.7x PyTorch edge: {ratio:.2f}x -> '
                 f'{"met" if ratio <= 0.7 else "MISSED"}')
    sr = size['light'] / size['pytorch']
    lines.append(f'  installed deps <= 1/10 of the full stack: {sr:.3f} -> '
                 f'{"met" if sr <= 0.1 else "MISSED"}')
    dm = abs(r['mAP']['light'] - r['mAP']['pytorch'])
    lines.append(f'  mAP within 0.1 of the PyTorch edge: |diff| {dm:.2f} -> '
                 f'{"met" if dm <= 0.1 else "MISSED"}')
    lines.append(f'  symbols agree on >= 99.9 %: {100 * s["rate"]:.4f} % -> '
                 f'{"met" if s["rate"] >= 0.999 else "MISSED"}')
    d = r.get('dynamic')
    if d:
        a = d['router_agreement']
        lines.append(f'  router agreement >= 99 %: {100 * a:.1f} % -> '
                     f'{"met" if a >= 0.99 else "MISSED"}')
    return '\n'.join(lines)


def _dynamic_lines(r):
    d = r.get('dynamic')
    if not d:
        return ['router agreement: not applicable (a model without edge exits: every image '
                'offloaded)']
    rt = d['router']
    params = ', '.join(f'{k}={v}' for k, v in rt.items() if k not in ('kind', 'threshold'))
    return [
        f'dynamic system: {rt["kind"]}({params}), calibrated threshold {rt["threshold"]:.6g}'
        f'{", edge score map" if d["score_maps"] else ""}; mAP above = edge-finished '
        'detections + the PyTorch cloud on the offloaded payloads; bytes include reports',
        f'router agreement: {100 * d["router_agreement"]:.1f} % of {r["num_images"]} images; '
        f'offload ratio light {d["offload_ratio"]["light"]:.2f}, PyTorch '
        f'{d["offload_ratio"]["pytorch"]:.2f}',
        f'edge detections (images both keep on the edge): identical label sets '
        f'{d["edge_detections_identical_sets"]}/{d["edge_images_both"]}, max |box diff| '
        f'{d["edge_max_abs_box_diff_px"]:.1e} px, max |score diff| '
        f'{d["edge_max_abs_score_diff"]:.1e}; symbols/payloads above: images both offload']


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    res = run(args)
    res['wall_s'] = time.time() - t0
    text = table(res)
    write_report(args.out, res, text, indent=1)
    print(text)
    print(f'[light] wrote {args.out} and its .txt ({res["wall_s"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
