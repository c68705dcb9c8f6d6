"""The cloud server as a real subprocess on loopback: round trip, every refusal, auth, queue
full, idempotent retries, graceful shutdown, metrics, and a bounded fuzz run."""
import copy
import signal
import threading
import time

import httpx
import pytest
import torch

from conftest import fake_batch
from serving_utils import TOKEN, cloud_server

AUTH = {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/octet-stream'}


@pytest.fixture(scope='module')
def server(served_model, tmp_path_factory):
    with cloud_server(served_model, tmp_path_factory.mktemp('srv')) as (url, proc):
        yield url, proc


def post(url, data, headers=AUTH, **kw):
    return httpx.post(url + '/v1/detect', content=data, headers=headers, timeout=60, **kw)


def test_round_trip_equals_in_process_decode(server, served_detector, served_payloads):
    url, _ = server
    ref = served_detector.decode_and_predict(served_payloads)
    for payload, r in zip(served_payloads, ref):
        resp = post(url, payload)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        inst = r.pred_instances
        assert len(body['detections']) == len(inst) > 0
        got = torch.tensor([d['bbox'] for d in body['detections']])
        torch.testing.assert_close(got, inst.bboxes.float(), atol=1e-3, rtol=0)
        assert [d['label'] for d in body['detections']] == inst.labels.tolist()
        torch.testing.assert_close(torch.tensor([d['score'] for d in body['detections']]),
                                   inst.scores.float(), atol=1e-6, rtol=0)
        names = ('circle', 'rectangle', 'triangle', 'star', 'ring', 'cross')
        assert all(d['class_name'] == names[d['label']] for d in body['detections'])
        assert body['image_size'] == [128, 128] and body['bytes'] == len(payload)
        assert set(body['timings_ms']) >= {'decode', 'cloud', 'queue', 'server'}
        assert all(v >= 0 for v in body['timings_ms'].values())


def test_refusals_name_the_problem_and_the_server_keeps_serving(server, served_payloads,
                                                                 served_detector):
    url, proc = server
    good = served_payloads[0]
    other = copy.deepcopy(served_detector)
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(1.01)
    inputs, samples = fake_batch(other, n=1, size=128, seed=7)
    foreign = other.encode(inputs, samples)[0]
    cases = [
        (good[:-3], {}, 400, 'TruncatedBitstreamError'),
        (good[:20] + bytes([good[20] ^ 1]) + good[21:], {}, 400, 'CorruptedBitstreamError'),
        (good[:4] + b'\x01' + good[5:], {}, 400, 'UnsupportedVersionError'),
        (b'', {}, 400, 'TruncatedBitstreamError'),
        (foreign, {}, 409, 'ModelMismatchError'),
        (bytes(2 << 20), {}, 413, 'PayloadTooLarge'),
        (good, {'Content-Type': 'application/json'}, 415, 'UnsupportedMediaType'),
        (good, {'Authorization': None}, 401, 'Unauthorized'),
        (good, {'Authorization': 'Bearer wrong'}, 403, 'Forbidden'),
        (good, {'Authorization': 'Basic dGVzdA=='}, 401, 'Unauthorized'),
        (good, {'Idempotency-Key': 'no spaces allowed'}, 400, 'BadIdempotencyKey'),
    ]
    for data, extra, status, error in cases:
        headers = {k: v for k, v in {**AUTH, **extra}.items() if v is not None}
        resp = post(url, data, headers=headers)
        assert resp.status_code == status, (error, resp.text)
        assert resp.json()['error'] == error
        if status == 401:
            assert resp.headers['www-authenticate'] == 'Bearer'
        assert post(url, good).status_code == 200  # still serving
    assert proc.poll() is None
    metrics = httpx.get(url + '/metrics').text
    for status in ('200', '400', '401', '403', '409', '413', '415'):
        assert f'ecc_requests_total{{route="detect",status="{status}"}}' in metrics
    assert TOKEN not in metrics


def test_retries_with_one_request_id_are_computed_once(server, served_payloads):
    url, _ = server
    h = dict(AUTH, **{'Idempotency-Key': 'img-000042.try'})
    first = post(url, served_payloads[1], headers=h).json()
    again = post(url, served_payloads[1], headers=h).json()
    assert again.pop('replayed') is True and 'replayed' not in first
    assert again['detections'] == first['detections']
    # the same id for another image is refused instead of answered with the wrong result
    resp = post(url, served_payloads[2], headers=h)
    assert resp.status_code == 422 and resp.json()['error'] == 'IdempotencyKeyReused'
    replays = [line for line in httpx.get(url + '/metrics').text.splitlines()
               if line.startswith('ecc_idempotent_replays_total')]
    assert replays and float(replays[0].split()[-1]) >= 1


def _concurrent(url, served_payloads, n):
    """n requests at once -> list of responses (or exceptions), in submission order."""
    out = [None] * n

    def go(i):
        try:
            out[i] = post(url, served_payloads[i % len(served_payloads)])
        except Exception as e:  # noqa: BLE001 -- reported by the assertions
            out[i] = e

    threads = [threading.Thread(target=go, args=(i, )) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_a_full_queue_answers_503_with_retry_after(served_model, served_payloads, tmp_path):
    with cloud_server(served_model, tmp_path, '--cfg-options', 'serving.max_queue=1',
                      'serving.max_batch_size=1', 'serving.max_wait_ms=0') as (url, _):
        out = _concurrent(url, served_payloads, 12)
        codes = [r.status_code for r in out]  # every request answered: none dropped
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        for r in out:
            if r.status_code == 503:
                assert r.json()['error'] == 'QueueFull' and r.headers['retry-after'] == '1'


def test_batching_groups_requests_and_answers_each_its_own(served_model, served_payloads,
                                                           served_detector,
                                                           tmp_path):
    ref = [r.pred_instances.scores.tolist()
           for r in served_detector.decode_and_predict(served_payloads)]
    with cloud_server(served_model, tmp_path, '--cfg-options', 'serving.max_batch_size=4',
                      'serving.max_wait_ms=300') as (url, _):
        out = _concurrent(url, served_payloads, 6)
        bodies = [r.json() for r in out]
        assert max(b['batch_size'] for b in bodies) > 1  # some requests shared a batch
        for i, b in enumerate(bodies):  # ... and each got its own image's detections
            assert [d['score'] for d in b['detections']] == pytest.approx(
                ref[i % len(served_payloads)], abs=1e-6)


def test_graceful_shutdown_finishes_requests_in_flight(served_model, served_payloads, tmp_path):
    with cloud_server(served_model, tmp_path, '--cfg-options', 'serving.max_wait_ms=1500',
                      'serving.max_batch_size=8') as (url, proc):
        result = {}
        t = threading.Thread(target=lambda: result.update(r=_concurrent(url, served_payloads, 3)))
        t.start()
        time.sleep(0.7)  # the requests now wait in the batcher
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert [r.status_code for r in result['r']] == [200, 200, 200]
        # uvicorn re-raises the signal once it has drained: exit by SIGTERM, after the answers
        assert proc.wait(60) in (0, -signal.SIGTERM)


def test_bounded_fuzz_run(server, served_payloads, served_detector):
    """120 hostile payloads (every forged kind at least once): each refused with its specific
    4xx or decoded into finite boxes inside the image; no 5xx, the server stays up."""
    from ecc_tools.payload_fuzz import check_boxes, fuzz_cases
    url, proc = server
    other = copy.deepcopy(served_detector)
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(0.99)
    inputs, samples = fake_batch(other, n=1, size=128, seed=7)
    cases = fuzz_cases(served_payloads, other.encode(inputs, samples)[0], n=120,
                       max_body_bytes=1 << 20, seed=3)
    assert len(cases) == 120
    with httpx.Client(timeout=60) as client:
        for case in cases:
            resp = client.post(url + '/v1/detect', content=case.data, headers=AUTH)
            assert resp.status_code in case.allowed, (case.kind, resp.status_code, resp.text)
            if resp.status_code == 200:
                assert not check_boxes(resp.json()), case.kind
            else:
                assert resp.json()['error'], case.kind
    assert proc.poll() is None and post(url, served_payloads[0]).status_code == 200


def test_edge_reports_are_validated_and_collected(served_model, served_detector,
                                                  served_payloads, tmp_path):
    """POST /v1/report: a DETECTIONS message of this model is accepted and written to the
    sink; another model's, a feature payload, and a report sent as features are refused."""
    import json

    import numpy as np

    from ecc_edge.codecs.detections import pack_detections
    fp = served_detector.model_fingerprint()
    report = pack_detections(7, np.array([[1.0, 2.0, 30.0, 40.0]]), [0.9], [2], fingerprint=fp)
    sink = tmp_path / 'reports.jsonl'
    with cloud_server(served_model, tmp_path, '--reports-out', sink) as (url, _):
        r = httpx.post(url + '/v1/report', content=report, headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json() == dict(image_id=7, boxes=1, bytes=len(report))
        foreign = pack_detections(7, np.zeros((0, 4)), [], [], fingerprint=bytes(8 * [5]))
        for data, status, error in ((foreign, 409, 'ModelMismatchError'),
                                    (served_payloads[0], 400, 'CodecMismatchError'),
                                    (report[:-1], 400, 'TruncatedBitstreamError')):
            r = httpx.post(url + '/v1/report', content=data, headers=AUTH, timeout=30)
            assert (r.status_code, r.json()['error']) == (status, error)
        r = post(url, report)  # a report is not a feature payload
        assert (r.status_code, r.json()['error']) == (400, 'CodecMismatchError')
        assert httpx.post(url + '/v1/report', content=report, timeout=30).status_code == 401
    lines = [json.loads(x) for x in sink.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]['image_id'] == 7
    det = lines[0]['detections'][0]
    assert det['bbox'] == [1.0, 2.0, 30.0, 40.0] and det['label'] == 2
    assert det['class_name'] == 'triangle' and abs(det['score'] - 230 / 255) < 1e-6


def test_several_uvicorn_workers_from_the_app_factory(served_model, served_detector,
                                                       served_payloads, tmp_path):
    """The README's multi-process deployment: ``uvicorn --factory ...app_from_env --workers 2``
    (each worker builds its own model from the environment) answers like the single server."""
    import os
    import socket
    import subprocess
    import sys

    from ecc_tools.serving_bench import stop
    from serving_utils import REPO, wait_ready
    with socket.socket() as s:  # a free port (uvicorn's --workers needs a number)
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ECC_SERVE_CONFIG=served_model['config'], OMP_NUM_THREADS='1',
               ECC_SERVE_CHECKPOINT=served_model['checkpoint'], ECC_SERVE_TOKEN=TOKEN)
    env.pop('ECC_SERVE_TOKEN_FILE', None)
    log = open(tmp_path / 'uvicorn.log', 'w+')
    proc = subprocess.Popen([sys.executable, '-m', 'uvicorn', '--factory',
                             'ecc_mmdet.serving.app:app_from_env', '--host', '127.0.0.1',
                             '--port', str(port), '--workers', '2', '--log-level', 'warning'],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    url = f'http://127.0.0.1:{port}'
    try:
        wait_ready(url, proc)
        ref = served_detector.decode_and_predict(served_payloads[:1])[0].pred_instances
        for _ in range(4):
            resp = post(url, served_payloads[0])
            assert resp.status_code == 200, resp.text
            assert [d['score'] for d in resp.json()['detections']] == pytest.approx(
                ref.scores.tolist(), abs=1e-6)
        assert post(url, served_payloads[0], headers={}).status_code == 401
    finally:
        stop(proc)
        log.close()
    assert TOKEN not in (tmp_path / 'uvicorn.log').read_text()
