"""Slow and vanishing clients against a real server subprocess on loopback: slowloris uploads
and slow headers are answered 408 and closed in time while normal requests are served, the
connection caps answer 429/503, SIGTERM with held uploads exits fast with no 5xx, a client gone
mid-body is one INFO line and a metric, ``--metrics-token`` guards ``/metrics``; and the fault
benchmark's ``--quick`` run."""
import json
import re
import signal
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

from serving_utils import TOKEN, cloud_server

AUTH = {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/octet-stream'}
BODY_S, HEADER_S = 2.0, 1.0  # the guarded server's timeouts (short, for the tests' time)
PER_CLIENT, TOTAL = 5, 30


@pytest.fixture(scope='module')
def guarded(served_model, tmp_path_factory):
    """A server with short timeouts, small caps and ``--metrics-token``: (url, proc, port)."""
    with cloud_server(served_model, tmp_path_factory.mktemp('guarded'), '--body-timeout',
                      BODY_S, '--header-timeout', HEADER_S, '--max-connections-per-client',
                      PER_CLIENT, '--max-connections', TOTAL, '--metrics-token') as (url, proc):
        yield url, proc, urlparse(url).port


def slow(port, n, **kw):
    from ecc_tools.serving_bench import SlowUploads
    return SlowUploads(port, n, TOKEN, **kw)


def answer_of(uploads, i, timeout=5.0):
    """What the server did to connection ``i`` of ``uploads`` (None: nothing yet)."""
    t_end = time.perf_counter() + timeout
    while uploads.results[i] is None and time.perf_counter() < t_end:
        time.sleep(0.02)
    return uploads.results[i]


def metric(url, name):
    text = httpx.get(url + '/metrics', headers=AUTH, timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith('#'))


def log_of(proc):
    proc.log.flush()
    return open(proc.log.name).read()


def test_slowloris_is_answered_408_in_time_and_does_not_block_others(guarded,
                                                                      served_payloads):
    url, proc, port = guarded
    with slow(port, 20, per_source=PER_CLIENT, trickle_s=0.5) as uploads, \
            slow(port, 2, headers_only=True, first_source=20) as headers:
        t0 = time.perf_counter()
        for payload in served_payloads:  # from 127.0.0.1, while 22 connections are held
            assert httpx.post(url + '/v1/detect', content=payload, headers=AUTH,
                              timeout=30).status_code == 200
        served_in = time.perf_counter() - t0
        assert uploads.open_count == 20 or served_in > BODY_S  # they were held meanwhile
        results = uploads.wait(BODY_S + 8) + headers.wait(5)
    for what, seconds in results[:20]:  # trickling one byte every 0.5 s does not help
        assert what == 408 and BODY_S - 0.3 < seconds < BODY_S + 5, (what, seconds)
    for what, seconds in results[20:]:
        assert what == 408 and HEADER_S - 0.3 < seconds < HEADER_S + 4, (what, seconds)
    assert metric(url, 'ecc_header_timeouts_total') >= 2
    assert metric(url, 'ecc_requests_total{route="detect",status="408"}') >= 20
    assert proc.poll() is None


def test_connection_caps_answer_429_per_client_and_503_in_total(guarded):
    _, _, port = guarded
    with slow(port, PER_CLIENT + 1, per_source=PER_CLIENT + 1, first_source=30) as mine, \
            slow(port, TOTAL - PER_CLIENT + 1, per_source=PER_CLIENT, first_source=31) as rest:
        over_client, over_total = answer_of(mine, -1), answer_of(rest, -1)
        assert mine.open_count == PER_CLIENT and rest.open_count == TOTAL - PER_CLIENT
        mine.wait(BODY_S + 8)
        rest.wait(BODY_S + 8)
    assert over_client is not None and over_client[0] == 429 and over_client[1] < 2
    assert over_total is not None and over_total[0] == 503 and over_total[1] < 2
    assert all(r is not None and r[0] == 408 for r in mine.results[:-1] + rest.results[:-1])


def test_refused_connections_waiting_for_their_request_are_bounded(guarded):
    """At most TOTAL refused connections wait for a request to refuse; one more is closed at
    once with no answer, so a client cannot hold sockets without bound by opening them fast."""
    import socket
    _, _, port = guarded
    socks = []
    try:
        for _ in range(PER_CLIENT + TOTAL + 1):  # all from one address, sending nothing
            s = socket.socket()
            s.bind(('127.0.0.40', 0))
            s.connect(('127.0.0.1', port))
            s.settimeout(HEADER_S + 5)
            socks.append(s)
        last = socks[-1].recv(100)  # closed by the server with no answer
        waiting = socks[-2].recv(100)  # a refusal waiting for its request: 408 at the timeout
    finally:
        for s in socks:
            s.close()
    assert last == b''
    assert waiting.startswith(b'HTTP/1.1 408'), waiting


def test_client_gone_mid_body_is_one_info_line_and_a_metric(guarded):
    url, proc, port = guarded
    before = metric(url, 'ecc_client_disconnects_total')
    lines_before = log_of(proc).count('disconnected before the end')
    uploads = slow(port, 1).open()
    time.sleep(0.3)
    uploads.close()  # mid-body
    t_end = time.time() + 10
    while metric(url, 'ecc_client_disconnects_total') < before + 1 and time.time() < t_end:
        time.sleep(0.1)
    assert metric(url, 'ecc_client_disconnects_total') == before + 1
    log = log_of(proc)
    gone = [line for line in log.splitlines() if 'disconnected before the end' in line]
    assert len(gone) == lines_before + 1 and ' INFO ' in gone[-1]
    assert 'Traceback' not in log and 'Exception in ASGI' not in log and 'ERROR' not in log


def test_metrics_token_flag_guards_metrics(guarded):
    url, _, _ = guarded
    assert httpx.get(url + '/metrics', timeout=10).status_code == 401
    assert httpx.get(url + '/metrics', headers={'Authorization': 'Bearer wrong'},
                     timeout=10).status_code == 403
    resp = httpx.get(url + '/metrics', headers=AUTH, timeout=10)
    assert resp.status_code == 200 and 'ecc_open_connections' in resp.text
    assert TOKEN not in resp.text
    assert httpx.get(url + '/healthz', timeout=10).status_code == 200  # probes stay open


def test_sigterm_with_held_uploads_exits_fast_without_5xx(served_model, served_payloads,
                                                           tmp_path):
    """Requests whose bodies arrived are answered; uploads still arriving get the 2-s grace
    and a 408 (slow headers: a clean close); no 5xx; exit in under 5 s."""
    with cloud_server(served_model, tmp_path, '--cfg-options', 'serving.max_wait_ms=1500',
                      'serving.max_batch_size=8') as (url, proc):
        port = urlparse(url).port
        answers = []
        posts = [threading.Thread(target=lambda p=p: answers.append(httpx.post(
            url + '/v1/detect', content=p, headers=AUTH, timeout=30).status_code))
            for p in served_payloads]
        with slow(port, 10, per_source=5) as uploads, \
                slow(port, 2, headers_only=True, first_source=10) as headers:
            for t in posts:
                t.start()
            time.sleep(0.5)  # the complete requests now wait in the batcher
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            exit_s = time.perf_counter() - t0
            for t in posts:
                t.join(30)
            held = uploads.wait(5) + headers.wait(5)
        log = log_of(proc)
    assert rc in (0, -signal.SIGTERM)
    assert sorted(answers) == [200, 200, 200]
    assert all(r is not None and r[0] in (408, 'closed') for r in held), held
    assert all(r[0] == 408 for r in held[:10])
    assert exit_s < 5.0, exit_s
    assert 'Traceback' not in log and 'Exception in ASGI' not in log


def test_timeouts_and_caps_must_be_positive():
    from ecc_mmdet.serving.service import ServingConfig
    assert ServingConfig.from_dict(dict(shutdown_grace_s=0)).shutdown_grace_s == 0
    for key, value in (('body_timeout_s', 0), ('header_timeout_s', -1), ('max_connections', 0),
                       ('max_connections_per_client', 'many'), ('shutdown_grace_s', -1)):
        with pytest.raises(ValueError, match=key):
            ServingConfig.from_dict({key: value})


def test_a_request_cancelled_at_shutdown_is_answered_503_not_500():
    """uvicorn cancels what is left after its graceful timeout; the app answers 503 with
    Retry-After (the client retries) instead of uvicorn's 500."""
    import asyncio

    from ecc_mmdet.serving.app import AnswerCancelled

    async def stuck(scope, receive, send):
        await asyncio.sleep(60)

    async def main():
        sent = []

        async def send(message):
            sent.append(message)

        task = asyncio.ensure_future(AnswerCancelled(stuck)(
            {'type': 'http', 'path': '/v1/detect', 'method': 'POST', 'headers': []}, None, send))
        await asyncio.sleep(0.05)
        task.cancel()
        await task
        return sent

    start, body = asyncio.run(main())
    headers = dict(start['headers'])
    assert start['status'] == 503 and headers[b'retry-after'] == b'1'
    assert json.loads(body['body'])['error'] == 'ShuttingDown'


def test_fault_benchmark_quick(served_model, tmp_path):
    """``tools/benchmark_faults.py --quick``: a kill -9 and restart while the edge client
    streams (0 images lost or duplicated, a complete COCO file), and 20 slowloris connections
    beside normal traffic."""
    from conftest import run_tool
    from ecc_mmdet.datasets.synthetic_coco import generate_synthetic_coco
    root = tmp_path / 'data'  # enough images for the kill to land mid-stream
    generate_synthetic_coco(str(root), num_train=1, num_val=24, num_calib=0, image_size=64,
                            seed=2, min_objects=1, max_objects=3, progress=False)
    out = tmp_path / 'out'
    proc = run_tool('benchmark_faults', served_model['config'], served_model['checkpoint'],
                    '--data-root', root, '--quick', '--cases', 'kill,slowloris',
                    '--out', out, timeout=300)
    res = json.loads((out / 'faults.json').read_text())
    kill = res['kill']
    assert len(kill['runs']) == 1
    run = kill['runs'][0]
    assert run['killed_mid_stream'] and run['expected'] == 24
    assert run['lost'] == 0 and run['duplicated'] == 0 and run['coco_complete']
    sl = res['slowloris']
    assert sl['connections'] == 20 and sl['held_mean'] >= 18 and sl['held_min'] > 0
    assert sl['normal']['with_slowloris']['errors'] == 0
    assert sl['normal']['without']['p99_ms'] > 0 and sl['server_5xx'] == 0
    assert re.search(r'kill -9', (out / 'faults.md').read_text())
    assert 'Traceback' not in proc.stderr
