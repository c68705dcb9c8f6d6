"""The load and fuzz benchmark of the cloud server (``tools/benchmark_serving.py``).

Everything runs on this machine and targets 127.0.0.1 only: the server is started as a
subprocess on a free loopback port, driven at fixed concurrency levels with a bounded number of
requests and a time limit, then stopped.

End-to-end latency of an image = its edge compute + encode (measured in-process beforehand, on
the same machine, through the deployment meter) + the client's round trip. The round trip is
split into the server's own figures (queue, decode, cloud compute) and the rest (HTTP, framing,
loopback network: ``network``). "Server overhead" is round trip minus decode and cloud compute:
what serving adds to the model.
"""
import contextlib
import os
import os.path as osp
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ecc_mmdet.apis import build_detector, build_test_dataset, iter_batches, load_config
from ecc_mmdet.deployment import DeploymentMeter, run_deployment, run_edge
from ecc_mmdet.structures import comm_record

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))
LOOPBACK = '127.0.0.1'


def prepare(config: str, checkpoint: str, data_root: Optional[str], num_images: int):
    """Edge side in-process: per image its payload (offloaded ones), edge/encode ms, the
    reference detections of the in-process cloud, and CommunicationMetric's bytes."""
    cfg = load_config(config, data_root)
    model = build_detector(cfg.model, checkpoint)
    dataset = build_test_dataset(cfg)
    meter = DeploymentMeter(measure_flops=False, estimate_rate=False)
    images = []
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset, num_images, batch_size=1):
            trace = meter.batch(1)
            out = run_edge(model, inputs, [s.clone() for s in samples], True, trace)
            ref = run_deployment(model, inputs, [s.clone() for s in samples], meter=meter)[0]
            rec = comm_record.read(ref)
            t = trace.time[0]
            images.append(dict(
                img_id=int(samples[0].img_id), tier=out.tiers[0], payload=out.payloads[0],
                edge_ms=1e3 * sum(v for k, v in t.items() if k != 'encode'),
                encode_ms=1e3 * t.get('encode', 0.0), metric_bytes=rec.payload_bytes,
                ref_scores=ref.pred_instances.scores.tolist()))
    return model, images


def wait_ready(url: str, proc, log, timeout: float = 300.0) -> None:
    """Until ``GET /readyz`` answers 200; RuntimeError with the server's log tail if it exits
    or is not ready in ``timeout`` seconds."""
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f'server exited ({proc.returncode}):\n{log.read()[-3000:]}')
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + '/readyz', timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f'server at {url} not ready after {timeout} s')


def stop(proc, timeout: float = 60) -> None:
    """SIGTERM (graceful: in-flight requests finish), then kill after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def server(config: str, checkpoint: str, token: Optional[str], options: Sequence[str] = (),
           threads: int = 1, timeout: float = 300, extra_args: Sequence[str] = (),
           log_dir: Optional[str] = None, token_file: Optional[str] = None):
    """``tools/serve_cloud.py`` on a free loopback port -> yields (base URL, Popen; its
    ``log`` attribute is the server's output file). ``token`` None serves without one
    (``--insecure-no-auth``) unless ``token_file`` holds it (``--token-file``); ``options`` go
    to ``--cfg-options``, ``extra_args`` as given. Stopped gracefully on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = osp.join(tmp, 'port')
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED='1')
        env.pop('ECC_SERVE_TOKEN', None)
        cmd = [sys.executable, osp.join(TOOLS, 'serve_cloud.py'), config, checkpoint,
               '--host', LOOPBACK, '--port', '0', '--port-file', port_file,
               '--threads', str(threads), *map(str, extra_args)]
        if token_file is not None:
            cmd += ['--token-file', token_file]
        elif token is None:
            cmd.append('--insecure-no-auth')
        else:
            env['ECC_SERVE_TOKEN'] = token
        if options:
            cmd += ['--cfg-options', *options]
        # a file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks
        log = open(osp.join(log_dir or tmp, f'server-{time.monotonic_ns()}.log'), 'w+')
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        proc.log = log
        try:
            t0 = time.time()
            while not osp.exists(port_file):
                if proc.poll() is not None or time.time() - t0 > timeout:
                    log.seek(0)
                    raise RuntimeError(f'server did not start ({proc.poll()}):\n'
                                       f'{log.read()[-3000:]}')
                time.sleep(0.2)
            url = f'http://{LOOPBACK}:{open(port_file).read().strip()}'
            wait_ready(url, proc, log, timeout - (time.time() - t0))
            yield url, proc
        finally:
            stop(proc)
            log.close()


def drive(url: str, token: str, images: List[dict], concurrency: int, requests: int,
          time_limit: float, max_retries: int = 8) -> Dict:
    """``requests`` uploads (cycling over the offloaded images) with ``concurrency`` in flight;
    every answer is checked against the image's in-process reference detections."""
    from ecc_mmdet.serving.client import CloudClient
    sendable = [im for im in images if im['tier'] == 'cloud']
    if not sendable:
        raise RuntimeError('no image was offloaded: nothing to send')
    client = CloudClient(url, token, timeout=60, max_retries=max_retries, backoff_s=0.05,
                         concurrency=concurrency)
    rows, failures = [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + time_limit

    def one(k: int):
        if time.perf_counter() > deadline:
            return
        im = sendable[k % len(sendable)]
        rid = f'bench-{uuid.uuid4().hex}'
        try:
            reply = client.send(im['payload'], rid)
        except Exception as e:  # noqa: BLE001 -- counted as lost
            with lock:
                failures.append(f'{type(e).__name__}: {e}')
            return
        scores = [d['score'] for d in reply['detections']]
        ok = len(scores) == len(im['ref_scores']) and np.allclose(scores, im['ref_scores'],
                                                                  atol=1e-5)
        t = reply['timings_ms']
        with lock:
            rows.append(dict(k=k, img_id=im['img_id'], ok=ok, bytes=len(im['payload']),
                             retries=reply.get('retries', 0), replayed=bool(reply.get('replayed')),
                             edge=im['edge_ms'], encode=im['encode_ms'], rtt=reply['client_ms'],
                             queue=t['queue'], decode=t['decode'], cloud=t['cloud'],
                             server=t['server'], batch=reply['batch_size']))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    client.close()
    return summarize(rows, failures, requests, wall, concurrency)


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def summarize(rows, failures, requested, wall, concurrency) -> Dict:
    done = len(rows)
    e2e = [r['edge'] + r['encode'] + r['rtt'] for r in rows]
    parts = {k: [r[k] for r in rows] for k in ('edge', 'encode', 'queue', 'decode', 'cloud')}
    parts['network'] = [r['rtt'] - r['server'] for r in rows]
    overhead = [r['rtt'] - r['decode'] - r['cloud'] for r in rows]
    ks = sorted(r['k'] for r in rows)
    return dict(
        concurrency=concurrency, requested=requested, answered=done, lost=len(failures),
        duplicated=done - len(set(ks)), mismatched=sum(not r['ok'] for r in rows),
        retries=sum(r['retries'] for r in rows), wall_s=wall,
        images_per_s=done / wall if wall > 0 else 0.0,
        latency_ms=dict(p50=_pct(e2e, 50), p95=_pct(e2e, 95), p99=_pct(e2e, 99)),
        round_trip_ms_p50=_pct([r['rtt'] for r in rows], 50),
        breakdown_ms_p50={k: _pct(v, 50) for k, v in parts.items()},
        breakdown_ms_mean={k: float(np.mean(v)) if v else float('nan')
                           for k, v in parts.items()},
        server_overhead_ms_p50=_pct(overhead, 50),
        mean_batch=float(np.mean([r['batch'] for r in rows])) if rows else float('nan'),
        bytes_on_wire=sum(r['bytes'] for r in rows), failures=failures[:5])


def fuzz(url: str, token: str, cases, timeout: float = 30.0) -> Dict:
    """Send every case once; tally statuses and problems."""
    import httpx
    from ecc_tools.payload_fuzz import check_boxes
    headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/octet-stream'}
    tally: Dict[str, Dict[str, int]] = {}
    problems = []
    n5xx = hangs = 0
    with httpx.Client(timeout=timeout) as client:
        for case in cases:
            try:
                resp = client.post(url + '/v1/detect', content=case.data, headers=headers)
            except httpx.TimeoutException:
                hangs += 1
                continue
            except httpx.HTTPError as e:  # the server went away
                problems.append(f'{case.kind}: {type(e).__name__}: {e}')
                continue
            st = resp.status_code
            kinds = tally.setdefault(case.kind.split('_')[0] if not case.kind.startswith(
                'forged') else 'forged', {})
            kinds[str(st)] = kinds.get(str(st), 0) + 1
            n5xx += st >= 500
            if st not in case.allowed:
                problems.append(f'{case.kind}: status {st} not in {tuple(case.allowed)}: '
                                f'{resp.text[:200]}')
            elif st == 200:
                problems += [f'{case.kind}: {p}' for p in check_boxes(resp.json())]
            elif not resp.json().get('error'):
                problems.append(f'{case.kind}: {st} without an error name')
    alive = False
    with contextlib.suppress(httpx.HTTPError):
        alive = httpx.get(url + '/healthz', timeout=5).status_code == 200
    return dict(cases=len(cases), by_kind=tally, server_5xx=n5xx, hangs=hangs,
                problems=problems[:20], num_problems=len(problems), server_alive=alive)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cloud_ceiling(model, images: List[dict], batch: int, repeats: int = 2) -> Dict:
    """In-process decode + cloud throughput at batch 1 and at ``batch`` on the same payloads:
    what batching can gain on this machine before any serving (the model's own ceiling)."""
    from mmdet.structures import DetDataSample

    from ecc_mmdet.deployment import run_cloud
    payloads = [im['payload'] for im in images if im['tier'] == 'cloud'][:2 * batch]
    out = {}
    with torch.no_grad():
        for bs in (1, batch):
            best = float('inf')
            for _ in range(repeats):
                t0 = time.perf_counter()
                for i in range(0, len(payloads), bs):
                    chunk = payloads[i:i + bs]
                    run_cloud(model, chunk, [DetDataSample() for _ in chunk], meter=DeploymentMeter(
                        measure_flops=False, estimate_rate=False))
                best = min(best, time.perf_counter() - t0)
            out[f'batch_{bs}_images_per_s'] = len(payloads) / best
    out['gain'] = out[f'batch_{batch}_images_per_s'] / out['batch_1_images_per_s']
    out['batch'] = batch
    return out


def plot(res: Dict, path: str, title: Optional[str] = None) -> None:
    """Throughput vs concurrency (batched, unbatched) and the mean time breakdown per level."""
    from .plotting import legend_beside, pyplot, save
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    lv = res['levels']
    conc = [r['concurrency'] for r in lv]
    a.plot(conc, [r['images_per_s'] for r in lv], 'o-', label='batched server')
    if res.get('unbatched'):
        u = res['unbatched']
        a.plot([u['concurrency']], [u['images_per_s']], 's', ms=8,
               label='unbatched server (max_batch_size=1)')
    a.set_xscale('log', base=2)
    a.set_xticks(conc, [str(c) for c in conc])
    a.minorticks_off()
    a.set_xlabel('requests in flight (concurrency, log scale)')
    a.set_ylabel('throughput (images / s)')
    a.set_title('Throughput')
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8, loc='best')
    bottom = np.zeros(len(lv))
    for p in ('edge', 'encode', 'network', 'queue', 'decode', 'cloud'):
        v = np.array([r['breakdown_ms_mean'][p] for r in lv])
        b.bar([str(c) for c in conc], v, bottom=bottom, label=p)
        bottom += v
    b.set_xlabel('requests in flight (concurrency)')
    b.set_ylabel('time per image (ms, mean)')
    b.set_title('Where the end-to-end time goes')
    b.grid(True, axis='y', alpha=0.3)
    legend_beside(b, title='stage', title_fontsize=8)
    m = res.get('machine') or {}
    fig.suptitle(title or f"Cloud server on loopback: {osp.basename(res.get('config') or '')}, "
                 f"{m.get('cpus', '?')} CPUs, {m.get('server_threads', '?')} server thread(s)")
    save(fig, path, dpi=110)


class SlowUploads:
    """``n`` slow clients (slowloris) on loopback, for the fault tests and benchmark.

    Each connection sends its request headers (with ``token``) and ``sent`` of the ``declared``
    body bytes, then one more byte every ``trickle_s`` seconds (0: it stalls); with
    ``headers_only`` it sends only the first 30 bytes of the headers. Connections come from the
    loopback addresses ``127.0.0.<first_source>``, ... (``per_source`` each: the server's
    per-client cap sees several clients). A reader thread records, per connection, what the
    server did and when (seconds after the connection was opened): ``results`` is a list of
    ``(status or 'closed' / 'reset' / 'refused', seconds)``, None while open; ``history`` holds
    every outcome. With ``reopen`` a connection the server ends is opened again at once (an
    attack that keeps ``n`` held) until :meth:`stop_reopening`.
    """

    def __init__(self, port: int, n: int, token: Optional[str], per_source: int = 50,
                 declared: int = 1000, sent: int = 10, trickle_s: float = 0.0,
                 headers_only: bool = False, first_source: int = 2, path: str = '/v1/detect',
                 reopen: bool = False):
        import selectors
        self.port, self.n, self.per_source, self.first_source = port, n, per_source, first_source
        self.trickle_s, self.reopen = trickle_s, reopen
        auth = f'Authorization: Bearer {token}\r\n' if token else ''
        head = (f'POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{auth}Content-Type: '
                f'application/octet-stream\r\nContent-Length: {declared}\r\n\r\n').encode()
        self.first_bytes = head[:30] if headers_only else head + bytes(sent)
        self.results: List[Optional[tuple]] = [None] * n
        self.history: List[tuple] = []
        self._socks, self._t0, self._data = {}, {}, {}
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def source(self, i: int) -> str:
        return f'127.0.0.{self.first_source + i // self.per_source}'

    def open(self) -> 'SlowUploads':
        with self._lock:
            for i in range(self.n):
                self._connect(i)
        self._thread.start()
        return self

    def stop_reopening(self) -> None:
        self.reopen = False

    def _connect(self, i: int) -> None:
        import selectors
        import socket
        t0 = time.perf_counter()
        try:
            s = socket.create_connection((LOOPBACK, self.port), timeout=10,
                                         source_address=(self.source(i), 0))
            s.sendall(self.first_bytes)
        except OSError as e:
            self._record(i, 'refused' if isinstance(e, ConnectionRefusedError) else 'reset', t0)
            return
        s.setblocking(False)
        self._socks[i], self._t0[i], self._data[i], self.results[i] = s, t0, b'', None
        self._sel.register(s, selectors.EVENT_READ, i)

    def _record(self, i: int, what, t0: float) -> None:
        self.results[i] = (what, time.perf_counter() - t0)
        self.history.append(self.results[i])

    def _finish(self, i: int, what) -> None:
        s = self._socks.pop(i)
        self._sel.unregister(s)
        s.close()
        self._record(i, what, self._t0[i])
        if self.reopen:
            self._connect(i)

    def _loop(self) -> None:
        next_trickle = time.perf_counter() + (self.trickle_s or float('inf'))
        while not self._stop.is_set():
            with self._lock:
                events = self._sel.select(0.05) if self._socks else []
                for key, _ in events:
                    if self._socks.get(key.data) is key.fileobj:  # not finished meanwhile
                        self._read(key.data, key.fileobj)
                if time.perf_counter() >= next_trickle:
                    next_trickle += self.trickle_s
                    for s in self._socks.values():
                        with contextlib.suppress(OSError):
                            s.send(b'\0')
            if not events:
                time.sleep(0.01)

    def _read(self, i: int, s) -> None:
        try:
            chunk = s.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._finish(i, 'reset')
            return
        self._data[i] += chunk
        data = self._data[i]
        if chunk and b'\r\n' not in data:
            return
        line = data.split(b'\r\n', 1)[0].split()
        self._finish(i, int(line[1]) if len(line) > 1 and line[1].isdigit() else 'closed')

    @property
    def open_count(self) -> int:
        return sum(r is None for r in self.results)

    def wait(self, timeout: float) -> List[Optional[tuple]]:
        """Until every connection is answered or closed, or ``timeout`` seconds."""
        t_end = time.perf_counter() + timeout
        while self.open_count and time.perf_counter() < t_end:
            time.sleep(0.05)
        return list(self.results)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for i in list(self._socks):
            self._socks[i].close()
        self._socks.clear()

    def __enter__(self) -> 'SlowUploads':
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def tally(results) -> Dict[str, int]:
    """``{status or what happened: count}`` of :class:`SlowUploads` results ('open': None)."""
    out: Dict[str, int] = {}
    for r in results:
        key = 'open' if r is None else str(r[0])
        out[key] = out.get(key, 0) + 1
    return out
