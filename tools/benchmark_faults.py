"""Fault benchmark of the serving path: the server killed, held by slow clients, stopped;
wrong files. Loopback only, every case bounded in count and time.

    python tools/benchmark_faults.py CONFIG [CHECKPOINT] [--data-root DIR] \
        [--cases kill,slowloris,sigterm,sidecar,checkpoints] [--kill-delays 2 5 10 30] \
        [--slowloris 200] [--out docs/benchmarks] [--work-dir DIR] [--quick]

Without CHECKPOINT the config's model gets seeded untrained weights (faults do not depend on
accuracy). The config, with ``--data-root`` applied, is what every tool of the run gets. A case
takes over the server the previous one left running (``tools/serve_cloud.py`` on 127.0.0.1).

- ``kill``: ``tools/edge_client.py --journal --retry-for`` streams the validation images; once
  ``--kill-after`` of them are answered the server gets ``kill -9``, and is restarted on the same
  port after each of ``--kill-delays`` seconds. If the client still gives up, it is rerun with
  ``--resume`` (counted). Then: images lost or duplicated, and whether the COCO file holds every
  image's detections as the in-process model computes them.
- ``slowloris``: normal requests' latency (p50/p99) without, then with ``--slowloris`` held
  uploads (headers and 10 of 1 000 body bytes, then a byte a second, from 127.0.0.2... 50 per
  address); what the server did to the slow ones and when; one address over the per-client cap.
- ``sigterm``: SIGTERM while uploads are held and normal requests flow: exit time, exit status,
  what every client saw.
- ``sidecar``: ``sidecar_fuzz`` of ``tools/ecc_tools/fault_cases.py`` on the light-edge export
  (``tools/export_edge_onnx.py``), unsigned and signed; ``checkpoints``: its
  ``checkpoint_refusals`` (wrong checkpoints through test, train, serve and client). Skipped
  with a message when that module or function is absent.

Writes ``OUT/faults.json`` and ``OUT/faults.md`` (the table, the targets and the command); the
servers' and client's logs and files stay in ``--work-dir`` (a temporary folder by default).
``--quick`` (the test): one kill after the first answer, restart after 1 s, 20 slow
connections, 16 requests a phase, 20 sidecar edits; servers with 2-s body and 1-s header
timeouts.
"""
import argparse
import contextlib
import functools
import itertools
import json
import os
import os.path as osp
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Optional

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)

TOOLS = osp.dirname(osp.abspath(__file__))
CASES = ('kill', 'slowloris', 'sigterm', 'sidecar', 'checkpoints')
QUICK_BODY_S = 2.0  # --quick: the servers' body timeout (and half of it for the headers)
QUICK_SERVER = ('--body-timeout', str(QUICK_BODY_S), '--header-timeout', str(QUICK_BODY_S / 2))
SCORE_TOL = 1e-4  # the server's JSON rounds scores to 1e-6; batching may move the last digits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a split detector config (untrained weights do for faults)')
    p.add_argument('checkpoint', nargs='?', help='its weights (default: seeded untrained '
                   'ones, saved in the work folder: faults do not depend on accuracy)')
    p.add_argument('--data-root', help='dataset root; its val split is what the client sends')
    p.add_argument('--cases', default=','.join(CASES), help=f'comma-separated, of {CASES}')
    p.add_argument('--kill-delays', type=float, nargs='+', help='seconds from the kill to the '
                   'restart, one client run each [2 5 10 30; quick: 1]')
    p.add_argument('--kill-after', type=float,
                   help='share of the images answered when the server is killed [0.3; quick: '
                   'the first]')
    p.add_argument('--retry-for', type=float, default=60.0, help="the client's --retry-for")
    p.add_argument('--slowloris', type=int, help='slow uploads held [200; quick: 20]')
    p.add_argument('--requests', type=int, help='normal requests a phase [200; quick: 16]')
    p.add_argument('--held', type=int, help='uploads held at SIGTERM [50; quick: 10]')
    p.add_argument('--concurrency', type=int, default=2, help='normal requests in flight')
    p.add_argument('--threads', type=int, default=1, help="the server's torch threads")
    p.add_argument('--quick', action='store_true', help='the small setting of the test')
    p.add_argument('--out', default='work_dirs/benchmarks', help='folder for faults.json/.md')
    p.add_argument('--work-dir', help='logs and client files (default: a temporary folder)')
    args = p.parse_args(argv)
    quick = args.quick
    for key, full, small in (('kill_delays', [2.0, 5.0, 10.0, 30.0], [1.0]),
                             ('kill_after', 0.3, 0.0),
                             ('slowloris', 200, 20), ('requests', 200, 16), ('held', 50, 10)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    args.cases = [c.strip() for c in args.cases.split(',') if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        p.error(f'--cases: unknown {sorted(unknown)}; known: {",".join(CASES)}')
    return args


class Bench:
    """What the cases share: arguments, token, work folder, the validation images (ids, folder,
    annotation file), the in-process reference, the payloads of normal traffic, and the server
    now running (a case takes over the one the previous case left running: fewer starts)."""

    def __init__(self, args):
        from ecc_mmdet.apis import load_config
        from ecc_mmdet.serving.service import ServingConfig
        from ecc_tools import serving_bench as sb
        self.args, self.sb, self.token = args, sb, sb.new_token()
        self.work = args.work_dir or tempfile.mkdtemp(prefix='faults_')
        os.makedirs(self.work, exist_ok=True)
        cfg = load_config(args.config, args.data_root)
        self.config = osp.join(self.work, 'config.py')  # --data-root applied, for every tool
        cfg.dump(self.config)
        self.checkpoint = args.checkpoint or untrained_checkpoint(cfg, self.work)
        ds = cfg.test_dataloader.dataset
        self.img_dir = osp.join(ds.data_root, ds.data_prefix.img)
        self.ann_file = osp.join(ds.data_root, ds.ann_file)
        self.serving = ServingConfig.from_dict(cfg.get('serving', None))
        self.server_args = QUICK_SERVER if args.quick else ()
        self.stack, self.live = contextlib.ExitStack(), None

    def server(self, port: Optional[int] = None) -> tuple:
        """The running server -> (url, Popen, port); when it has exited, a new one on ``port``
        (a restart) or a free port. Its log stays in the work folder; all are stopped by
        :meth:`close`."""
        if self.live is None or self.live[1].poll() is not None:
            a, port = self.args, port or free_port()
            url, proc = self.stack.enter_context(self.sb.server(
                self.config, self.checkpoint, self.token, threads=a.threads, timeout=300,
                log_dir=self.work, extra_args=self.server_args + ('--port', str(port))))
            self.live = (url, proc, port)
        return self.live

    def close(self) -> None:
        self.stack.close()

    @functools.cached_property
    def images(self) -> list:
        """Every validation image's payload and in-process detections (serving_bench)."""
        print(f'[faults] in-process reference of {self.img_dir}', flush=True)
        a = self.args
        return self.sb.prepare(self.config, self.checkpoint, a.data_root, 10**9)[1]

    @functools.cached_property
    def reference(self) -> dict:
        """img_id -> its in-process detections' scores, highest first."""
        return {im['img_id']: sorted(im['ref_scores'], reverse=True) for im in self.images}

    @functools.cached_property
    def payloads(self) -> list:
        return [im['payload'] for im in self.images if im['tier'] == 'cloud']

    @property
    def body_timeout_s(self) -> float:
        return QUICK_BODY_S if self.args.quick else self.serving.body_timeout_s


def untrained_checkpoint(cfg, work: str, seed: int = 0) -> str:
    """The config's model with seeded initial weights, saved in ``work`` -> its path."""
    import torch
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import build_detector
    torch.manual_seed(seed)
    path = osp.join(work, f'untrained_seed{seed}.pth')
    save_checkpoint({'state_dict': build_detector(cfg.model).state_dict(), 'meta': {}}, path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- kill -9, restart
def start_client(b: Bench, url: str, files: dict, resume: bool) -> subprocess.Popen:
    a = b.args
    cmd = [sys.executable, osp.join(TOOLS, 'edge_client.py'), b.config, b.checkpoint,
           '--server', url, '--source', b.img_dir, '--ann-file', b.ann_file,
           '--out', files['out'], '--timings', files['timings'], '--journal', files['journal'],
           '--retry-for', str(a.retry_for), '--concurrency', str(a.concurrency),
           '--threads', '1'] + (['--data-root', a.data_root] if a.data_root else []) + \
        (['--resume'] if resume else [])
    env = dict(os.environ, ECC_SERVE_TOKEN=b.token, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.pop('ECC_SERVE_TOKEN_FILE', None)
    log = open(files['log'], 'a')
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def journal_answered(path: str) -> int:
    """Images the client's journal holds (its whole lines with an ``img_id``)."""
    if not osp.exists(path):
        return 0
    with open(path) as f:
        return sum(line.endswith('\n') and '"img_id":' in line for line in f)


def kill_run(b: Bench, delay: float) -> dict:
    """One client run with a kill -9 once ``--kill-after`` of the images are answered and a
    restart ``delay`` seconds later."""
    d = osp.join(b.work, f'kill_{delay:g}s')
    os.makedirs(d, exist_ok=True)
    files = {k: osp.join(d, f) for k, f in (('journal', 'journal.jsonl'), ('log', 'client.log'),
                                             ('out', 'results.json'),
                                             ('timings', 'timings.json'))}
    n = len(b.reference)
    kill_at, t_start = max(1, int(n * b.args.kill_after)), time.time()
    res = dict(restart_after_s=delay, expected=n)
    url, proc, port = b.server()
    client = start_client(b, url, files, resume=False)
    t_end = time.time() + 600
    while journal_answered(files['journal']) < kill_at and client.poll() is None \
            and time.time() < t_end:
        time.sleep(0.01)
    proc.kill()
    t_kill = time.perf_counter()
    proc.wait()
    answered = journal_answered(files['journal'])
    res.update(answered_at_kill=answered,
               killed_mid_stream=client.poll() is None and 0 < answered < n)
    time.sleep(max(0.0, delay - (time.perf_counter() - t_kill)))
    url, _, _ = b.server(port)  # the restart, on the same port
    res['downtime_s'] = time.perf_counter() - t_kill
    exits = [client.wait(600)]
    while exits[-1] != 0 and len(exits) < 3:  # the recovery path: the same run, resumed
        exits.append(start_client(b, url, files, resume=True).wait(600))
    res.update(client_exits=exits, resumes=len(exits) - 1, wall_s=time.time() - t_start)
    res.update(check_outputs(b, files))
    print(f'[faults] kill, restart after {delay:g} s: {res}', flush=True)
    return res


def check_outputs(b: Bench, files: dict) -> dict:
    """Lost and duplicated images (the timings' rows), and the COCO file against the
    in-process reference (each image's box count and scores)."""
    rows = []
    if osp.exists(files['timings']):
        with open(files['timings']) as f:
            rows = json.load(f)['images']
    ids = [r['img_id'] for r in rows]
    coco = None
    if osp.exists(files['out']):
        with open(files['out']) as f:
            coco = json.load(f)
    by_image = {}
    for det in coco or []:
        by_image.setdefault(det['image_id'], []).append(det['score'])
    wrong = [i for i, ref in b.reference.items()
             if not _same_scores(sorted(by_image.get(i, []), reverse=True), ref)]
    lost = len(set(b.reference) - set(ids))
    dup = len(ids) - len(set(ids))
    return dict(answered=len(set(ids)), lost=lost, duplicated=dup,
                coco_images_wrong=len(wrong) if coco is not None else None,
                coco_complete=coco is not None and not wrong and lost == 0 and dup == 0,
                journal_images=journal_answered(files['journal']))


def _same_scores(got, ref) -> bool:
    return len(got) == len(ref) and all(abs(g - r) <= SCORE_TOL for g, r in zip(got, ref))


def kill_case(b: Bench) -> dict:
    runs = [kill_run(b, delay) for delay in b.args.kill_delays]
    ok = all(r['killed_mid_stream'] and r['lost'] == 0 and r['duplicated'] == 0 and
             r['coco_complete'] for r in runs)
    return dict(runs=runs, target_met=ok)


# ---------------------------------------------------------------------- normal traffic
def traffic(url: str, b: Bench, n: int, stop: threading.Event = None) -> list:
    """``n`` uploads (cycling over the payloads), ``--concurrency`` in flight, from
    127.0.0.1 -> events ``(start, end, status or error name)`` (perf_counter seconds). A worker
    stops at a refused connection (the server has gone) or when ``stop`` is set."""
    import httpx
    headers = {'Authorization': f'Bearer {b.token}', 'Content-Type': 'application/octet-stream'}
    events, lock, counter = [], threading.Lock(), itertools.count()

    def worker():
        with httpx.Client(timeout=60) as client:
            for k in counter:
                if k >= n or (stop is not None and stop.is_set()):
                    return
                t0 = time.perf_counter()
                try:
                    what = client.post(url + '/v1/detect', headers=headers,
                                       content=b.payloads[k % len(b.payloads)]).status_code
                except httpx.HTTPError as e:
                    what = type(e).__name__
                with lock:
                    events.append((t0, time.perf_counter(), what))
                if what == 'ConnectError':
                    return

    threads = [threading.Thread(target=worker) for _ in range(b.args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return events


def latency(events) -> dict:
    import numpy as np
    ms = [1e3 * (t1 - t0) for t0, t1, what in events if what == 200]
    pct = (lambda q: float(np.percentile(ms, q))) if ms else (lambda q: float('nan'))
    return dict(requests=len(events), ok=len(ms), errors=len(events) - len(ms),
                p50_ms=pct(50), p99_ms=pct(99), max_ms=max(ms, default=float('nan')),
                wall_s=max((e[1] for e in events), default=0) - min((e[0] for e in events),
                                                                   default=0))


# ------------------------------------------------------------------------------ slowloris
def slowloris_case(b: Bench) -> dict:
    """Normal traffic without, then with the slow uploads held (each one the server ends is
    opened again: ``--slowloris`` held throughout); then one address over the per-client cap."""
    sb, n = b.sb, b.args.slowloris
    url, _, port = b.server()
    traffic(url, b, 4 * b.args.concurrency)  # warm-up (first batches, connections)
    without = latency(traffic(url, b, b.args.requests))
    with sb.SlowUploads(port, n, b.token, per_source=50, trickle_s=1.0, reopen=True) as slow:
        held, done = [slow.open_count], threading.Event()

        def sample():  # how many are held while the normal requests run
            while not done.wait(0.1):
                held.append(slow.open_count)

        sampler = threading.Thread(target=sample)
        sampler.start()
        loaded = latency(traffic(url, b, b.args.requests))
        done.set()
        sampler.join()
        slow.stop_reopening()
        slow.wait(b.body_timeout_s + 15)
        answers = list(slow.history)
    ratio = loaded['p99_ms'] / without['p99_ms']
    seconds = sorted(r[1] for r in answers if isinstance(r[0], int))
    res = dict(connections=n, held_min=min(held), held_mean=sum(held) / len(held),
               normal=dict(without=without, with_slowloris=loaded), p99_ratio=ratio,
               slow_answers=sb.tally(answers), body_timeout_s=b.body_timeout_s,
               slow_answered_s=dict(min=seconds[0], max=seconds[-1]) if seconds else None,
               server_5xx=sum(v for k, v in sb.tally(answers).items() if k.startswith('5')),
               per_client_cap=cap_check(b, port))
    res['target_met'] = (ratio <= 2.0 and res['held_mean'] >= 0.95 * n and
                         loaded['errors'] == 0 and res['server_5xx'] == 0)
    print(f'[faults] slowloris: {res}', flush=True)
    return res


def cap_check(b: Bench, port: int) -> dict:
    """``cap + 8`` connections from one address: the ones over the cap get 429 at once."""
    cap = b.serving.max_connections_per_client
    with b.sb.SlowUploads(port, cap + 8, b.token, per_source=cap + 8, first_source=250) as up:
        t_end = time.perf_counter() + 5
        while sum(r is not None for r in up.results) < 8 and time.perf_counter() < t_end:
            time.sleep(0.02)
        return dict(cap=cap, opened=cap + 8, answers_within_5s=b.sb.tally(up.results))


# -------------------------------------------------------------------------------- SIGTERM
def sigterm_case(b: Bench) -> dict:
    """SIGTERM with ``--held`` uploads and 10 slow-header connections held while normal
    requests flow: exit time and what each client saw."""
    sb, stop, events = b.sb, threading.Event(), []
    url, proc, port = b.server()
    with sb.SlowUploads(port, b.args.held, b.token, trickle_s=1.0) as up, \
            sb.SlowUploads(port, 10, b.token, headers_only=True, first_source=200) as hdr:
        t = threading.Thread(target=lambda: events.extend(traffic(url, b, 10**6, stop)))
        t.start()
        time.sleep(1.0)
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
        exit_s = time.perf_counter() - t_term
        stop.set()
        t.join(60)
        held, slow_headers = up.wait(5), hdr.wait(5)
    in_flight = [e[2] for e in events if e[0] < t_term < e[1]]
    after = [e[2] for e in events if e[0] >= t_term]
    codes = [x for x in in_flight + after + [r[0] for r in held + slow_headers if r]]
    res = dict(held_uploads=b.args.held, slow_headers=10, exit_s=exit_s, exit_status=rc,
               held_answers=sb.tally(held), slow_header_answers=sb.tally(slow_headers),
               in_flight_at_sigterm=_count(in_flight), started_after_sigterm=_count(after),
               answered_before_sigterm=sum(e[1] <= t_term and e[2] == 200 for e in events),
               any_5xx=sum(isinstance(c, int) and c >= 500 for c in codes))
    res['target_met'] = exit_s <= 5.0 and res['any_5xx'] == 0 and all(
        c == 200 for c in in_flight)
    print(f'[faults] sigterm: {res}', flush=True)
    return res


def _count(values) -> dict:
    out = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


# ------------------------------------------------------------- cases of tools/ecc_tools
def _fault_case(name: str):
    """``tools/ecc_tools/fault_cases.py``'s ``name`` -> (function, None) or (None, why not)."""
    try:
        from ecc_tools import fault_cases
    except ImportError as e:
        return None, f'tools/ecc_tools/fault_cases.py not importable ({e})'
    fn = getattr(fault_cases, name, None)
    return fn, None if fn is not None else f'tools/ecc_tools/fault_cases.py has no {name}()'


def sidecar_case(b: Bench) -> dict:
    """``sidecar_fuzz`` on the light-edge export of the model, unsigned and signed (the edge
    holds the operator's key, the forger does not)."""
    fuzz, why = _fault_case('sidecar_fuzz')
    if fuzz is None:
        return dict(skipped=why)
    from ecc_edge.sidecar import read_key_file
    a, n = b.args, 20 if b.args.quick else 200
    key_file = osp.join(b.work, 'sidecar.key')
    with open(key_file, 'w') as f:
        f.write(os.urandom(32).hex())
    res = {}
    for name, extra in (('unsigned', []), ('signed', ['--sidecar-key-file', key_file])):
        export = osp.join(b.work, f'edge_{name}')
        subprocess.run([sys.executable, osp.join(TOOLS, 'export_edge_onnx.py'), b.config,
                        b.checkpoint, '--out-dir', export, *extra] +
                       (['--data-root', a.data_root] if a.data_root else []),
                       check=True, capture_output=True, text=True)
        res[name] = fuzz(export, n_edits=n, seed=0,
                         key=read_key_file(key_file) if extra else None)
    runs = list(res.values())
    res['target_met'] = all(r['tracebacks'] == 0 and r['refused'] == r['refused_naming_field']
                            for r in runs) and res['signed']['changed'] == 0
    print(f'[faults] sidecar: {res}', flush=True)
    return res


def checkpoints_case(b: Bench) -> dict:
    """``checkpoint_refusals``: wrong checkpoints through test, train, serve and client."""
    refusals, why = _fault_case('checkpoint_refusals')
    if refusals is None:
        return dict(skipped=why)
    res = refusals(b.config, b.checkpoint, osp.join(b.work, 'checkpoints'))
    res['target_met'] = res['all_refused']
    print(f'[faults] checkpoints: {res}', flush=True)
    return res


def data_origin(img_dir: str) -> str:
    """Where the images come from: the command that makes a synthetic set again (from its
    meta.json), else the folder."""
    root = osp.dirname(osp.normpath(img_dir))
    meta = osp.join(root, 'meta.json')
    if not osp.exists(meta):
        return img_dir
    with open(meta) as f:
        m = json.load(f)
    return (f'python -m ecc_mmdet.datasets.synthetic_coco --out {root} --num-train '
            f'{m["num_train"]} --num-val {m["num_val"]} --seed {m["seed"]} --image-size '
            f'{" ".join(map(str, m["image_size"]))}')


def log_problems(work: str) -> dict:
    """Tracebacks and 500s in every server log of the run."""
    out = dict(server_logs=0, tracebacks=0, asgi_exceptions=0, status_500=0)
    for f in sorted(os.listdir(work)):
        if f.startswith('server-') and f.endswith('.log'):
            text = open(osp.join(work, f)).read()
            out['server_logs'] += 1
            out['tracebacks'] += text.count('Traceback')
            out['asgi_exceptions'] += text.count('Exception in ASGI application')
            out['status_500'] += text.count(' 500 ')
    return out


# ------------------------------------------------------------------------------- report
def table(res: dict) -> str:
    """The readable report (Markdown): command, one table per case, the targets."""
    m = res['machine']
    lines = ['# Fault benchmark (loopback)', '', f'    {res["command"]}', '',
             f'Data: `{res["data"]}`.', '',
             (f'{res["images"]} validation images; ' if res['images'] else '') +
             f'{m["cpus"]} CPUs, Python {m["python"]}, '
             f'server torch threads {m["server_threads"]}, OMP_NUM_THREADS '
             f'{m["omp_num_threads"]}; {res["wall_s"]:.0f} s in all.', '']
    for case in res['cases']:
        r = res[case]
        why = [f'{k}: {r[k]}' for k in ('skipped', 'failed') if k in r]
        if why:
            lines += [f'## {case}', '', why[0], '']
            continue
        lines += TABLES[case](r)
    lines += ['## Targets', '']
    for case in res['cases']:
        met = res[case].get('target_met')
        lines.append(f'- {case}: {"skipped" if met is None else "met" if met else "MISSED"}')
    p = res['logs']
    lines += ['', f'Server logs: {p["server_logs"]}, tracebacks {p["tracebacks"]}, '
              f'"Exception in ASGI application" {p["asgi_exceptions"]}.']
    return '\n'.join(lines)


def _table_kill(r: dict) -> list:
    lines = ['## kill -9 while the edge client streams, restart on the same port', '',
             '| restart after (s) | down (s) | answered at kill | client exits | resumes | '
             'lost | duplicated | COCO complete | wall (s) |', '|' + '---|' * 9]
    for x in r['runs']:
        lines.append(f'| {x["restart_after_s"]:g} | {x.get("downtime_s", float("nan")):.1f} | '
                     f'{x["answered_at_kill"]}/{x["expected"]} | '
                     f'{" ".join(map(str, x["client_exits"]))} | {x["resumes"]} | {x["lost"]} | '
                     f'{x["duplicated"]} | {"yes" if x["coco_complete"] else "NO"} | '
                     f'{x["wall_s"]:.0f} |')
    return lines + ['', 'Target: 0 images lost or duplicated and a complete COCO file (each '
                    "image's detections as the in-process model's) in every case.", '']


def _table_slowloris(r: dict) -> list:
    w, s = r['normal']['without'], r['normal']['with_slowloris']
    cap = r['per_client_cap']
    return [f'## {r["connections"]} slowloris uploads beside normal traffic', '',
            '| normal requests | n | errors | p50 (ms) | p99 (ms) | max (ms) |',
            '|---|---|---|---|---|---|',
            f'| without | {w["requests"]} | {w["errors"]} | {w["p50_ms"]:.1f} | '
            f'{w["p99_ms"]:.1f} | {w["max_ms"]:.1f} |',
            f'| with {r["held_mean"]:.0f} held (min {r["held_min"]}) | {s["requests"]} | '
            f'{s["errors"]} | '
            f'{s["p50_ms"]:.1f} | {s["p99_ms"]:.1f} | {s["max_ms"]:.1f} |', '',
            f'p99 with / without: {r["p99_ratio"]:.2f} (target <= 2). The slow uploads '
            f'(10 of 1 000 bytes, then a byte a second; each one ended is opened again while '
            f'the normal requests run): {json.dumps(r["slow_answers"])} after '
            f'{_span(r["slow_answered_s"])} s (body timeout {r["body_timeout_s"]:g} s). '
            f'{cap["opened"]} connections from one address (cap {cap["cap"]}): '
            f'{json.dumps(cap["answers_within_5s"])} within 5 s.', '']


def _table_sigterm(r: dict) -> list:
    return ['## SIGTERM with held connections', '',
            '| held uploads | slow headers | exit (s) | exit status | held uploads got | '
            'slow headers got | in flight at SIGTERM | started after | 5xx |',
            '|' + '---|' * 9,
            f'| {r["held_uploads"]} | {r["slow_headers"]} | {r["exit_s"]:.2f} | '
            f'{r["exit_status"]} | {json.dumps(r["held_answers"])} | '
            f'{json.dumps(r["slow_header_answers"])} | {json.dumps(r["in_flight_at_sigterm"])} | '
            f'{json.dumps(r["started_after_sigterm"])} | {r["any_5xx"]} |', '',
            'Target: exit in <= 5 s, no 5xx, the requests in flight answered 200.', '']


def _table_sidecar(r: dict) -> list:
    lines = ['## Forged sidecars (edge.json edited, checksum recomputed)', '',
             '| sidecar | edits | refused | naming the field | identical outputs | '
             'changed outputs | tracebacks |', '|' + '---|' * 7]
    for name in ('unsigned', 'signed'):
        x = r[name]
        lines.append(f'| {name} | {x["edits"]} | {x["refused"]} | {x["refused_naming_field"]} '
                     f'| {x["identical"]} | {x["changed"]} | {x["tracebacks"]} |')
    return lines + ['', 'Target: 0 tracebacks; each edit refused naming its field, or harmless '
                    '(identical outputs); signed: no edit runs with changed outputs. An '
                    'unsigned sidecar cannot tell an in-schema edit from an export (a checksum '
                    'is not authentication).', '']


def _table_checkpoints(r: dict) -> list:
    tools = sorted({t for c in r['cases'].values() for t in c})
    lines = ['## Wrong checkpoints', '', '| checkpoint | ' + ' | '.join(tools) + ' |',
             '|' + '---|' * (len(tools) + 1)]
    for case, by_tool in r['cases'].items():
        lines.append(f'| {case} | ' + ' | '.join(
            'refused' if by_tool[t]['refused'] else 'NOT refused' for t in tools) + ' |')
    return lines + ['', 'Refused: non-zero exit, one `error:` line, no traceback.', '']


def _span(s) -> str:
    return 'n/a' if not s else f'{s["min"]:.1f}-{s["max"]:.1f}'


RUNS = dict(kill=kill_case, slowloris=slowloris_case, sigterm=sigterm_case,
            sidecar=sidecar_case, checkpoints=checkpoints_case)
TABLES = dict(kill=_table_kill, slowloris=_table_slowloris, sigterm=_table_sigterm,
              sidecar=_table_sidecar, checkpoints=_table_checkpoints)


def run(args) -> dict:
    t0 = time.time()
    b = Bench(args)
    omp = os.environ.get('OMP_NUM_THREADS')
    res = dict(command=(f'OMP_NUM_THREADS={omp} ' if omp else '') + 'python ' + ' '.join(
                   [osp.relpath(__file__)] + sys.argv[1:]),
               config=args.config, checkpoint=args.checkpoint or 'untrained (seed 0)',
               cases=args.cases, quick=args.quick, work_dir=b.work,
               machine=dict(cpus=os.cpu_count(), python=platform.python_version(),
                            server_threads=args.threads,
                            omp_num_threads=os.environ.get('OMP_NUM_THREADS')))
    res['data'] = data_origin(b.img_dir)
    try:
        for case in args.cases:
            print(f'[faults] case {case}', flush=True)
            try:
                res[case] = RUNS[case](b)
            except Exception as e:  # noqa: BLE001 -- reported; the other cases still run
                traceback.print_exc()
                res[case] = dict(failed=f'{type(e).__name__}: {e}', target_met=False)
            for what in ('skipped', 'failed'):
                if what in res[case]:
                    print(f'[faults] {case} {what}: {res[case][what]}', flush=True)
    finally:
        b.close()
    res.update(logs=log_problems(b.work), wall_s=time.time() - t0,
               images=len(b.images) if 'images' in vars(b) else None)
    return res


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    text = table(res)
    os.makedirs(args.out, exist_ok=True)
    for name, write in (('faults.json', lambda f: json.dump(res, f, indent=1)),
                        ('faults.md', lambda f: f.write(text + '\n'))):
        with open(osp.join(args.out, name), 'w') as f:
            write(f)
    print(text)
    print(f'[faults] wrote {args.out}/faults.json and faults.md ({res["wall_s"]:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
