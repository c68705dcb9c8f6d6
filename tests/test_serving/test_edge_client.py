"""The edge client: ``tools/edge_client.py`` against a real cloud server on loopback gives what
``tools/test.py`` computes in one process; ``EdgeRunner`` makes the in-process payloads (from the
full checkpoint, an ``edge.pth`` export or an OpenCV frame); ``CloudClient`` retries with the
same request id (the server replays the first answer) and stops on final refusals, checked
against a scripted loopback HTTP server."""
import http.server
import json
import os.path as osp
import threading

import httpx
import pytest
import torch

from conftest import run_tool
from serving_utils import TOKEN, cloud_server


@pytest.fixture(scope='module')
def reference(served_model):
    """The checkpoint's predictions and payloads in this process: what ``tools/test.py``
    computes (same dataset, pipeline and batch size)."""
    from ecc_mmdet.apis import build_detector, build_test_dataset, iter_batches, load_config
    cfg = load_config(served_model['config'])
    model = build_detector(cfg.model, served_model['checkpoint'])
    dataset = build_test_dataset(cfg)
    preds, payloads = {}, {}
    with torch.no_grad():
        for inputs, samples in iter_batches(model, dataset,
                                            batch_size=cfg.test_dataloader.batch_size):
            for res in model.predict(inputs, samples):
                preds[res.img_id] = res.pred_instances
        for inputs, samples in iter_batches(model, dataset, batch_size=1):
            payloads[samples[0].img_id] = (samples[0].img_path, model.encode(inputs, samples)[0])
    return dict(preds=preds, payloads=payloads, cat_ids=list(dataset.cat_ids))


@pytest.fixture(scope='module')
def server(served_model, reference, tmp_path_factory):  # after `reference`: 2 CPU cores
    with cloud_server(served_model, tmp_path_factory.mktemp('edge_srv')) as (url, _):
        yield url


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / 'token'
    path.write_text(TOKEN + '\n')
    return str(path)


def test_client_tool_matches_in_process_predictions(served_model, reference, server, tmp_path,
                                                    token_file):
    root = served_model['data_root']
    out, timings = tmp_path / 'results.json', tmp_path / 'timings.json'
    proc = run_tool('edge_client', served_model['config'], served_model['checkpoint'],
                    '--server', server, '--source', osp.join(root, 'val'),
                    '--token-file', token_file, '--concurrency', 2,
                    '--ann-file', osp.join(root, 'annotations', 'instances_val.json'),
                    '--out', out, '--timings', timings)
    assert TOKEN not in proc.stdout + proc.stderr
    assert '4 images, 4 offloaded' in proc.stdout
    results = json.loads(out.read_text())
    by_image = {}
    for r in results:
        by_image.setdefault(r['image_id'], []).append(r)
    preds, cat_ids = reference['preds'], reference['cat_ids']
    assert set(by_image) <= set(preds)
    n_boxes = 0
    for img_id, inst in preds.items():
        got = by_image.get(img_id, [])
        assert len(got) == len(inst), img_id
        for r, box, score, label in zip(got, inst.bboxes.tolist(), inst.scores.tolist(),
                                        inst.labels.tolist()):
            assert r['category_id'] == cat_ids[label]
            x, y, w, h = r['bbox']
            assert [x, y, x + w, y + h] == pytest.approx(box, abs=1e-2)
            assert r['score'] == pytest.approx(score, abs=1e-5)
            n_boxes += 1
    assert n_boxes > 0  # untrained weights still give boxes: the comparison compared something
    t = json.loads(timings.read_text())
    assert t['summary']['images'] == 4 and t['summary']['offloaded'] == 4
    assert sorted(r['img_id'] for r in t['images']) == sorted(preds)
    for row in t['images']:
        assert row['tier'] == 'cloud' and row['bytes'] > 0 and row['retries'] == 0
        assert row['edge_ms'] >= row['encode_ms'] > 0
        assert 0 < row['server_ms'] <= row['attempt_ms'] <= row['client_ms']
        assert row['network_ms'] == pytest.approx(row['attempt_ms'] - row['server_ms'])


EXIT = dict(  # a small untrained exit; score_thr 0 so that it still reports boxes
    type='EdgeExit', neck=dict(type='EdgeExitPyramid', out_channels=8, num_levels=3),
    head=dict(type='ATSSHead', num_classes=6, in_channels=8, feat_channels=8, stacked_convs=1,
              norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
              anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=2,
                                    scales_per_octave=1, strides=[8, 16, 32]),
              bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                              target_stds=[0.1, 0.1, 0.2, 0.2])),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=20))


def test_edge_finished_and_offloaded_images_merge_like_predict(served_model, server, tmp_path,
                                                               token_file, capsys):
    """With an exit and a router, some images finish on the edge (only their detections report
    goes up, to /v1/report) and the rest go to the same server (the exit is not in the
    fingerprint): the tool's results are still the in-process deployment path's."""
    import edge_client
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import (build_detector, build_test_dataset, iter_batches,
                                load_config)
    cfg = load_config(served_model['config'])
    cfg.model.update(edge_exit=EXIT, router=dict(type='RandomRouter', threshold=0.5),
                     edge_report=dict(score_thr=0.0))  # edge-finished images report up
    config, ckpt = str(tmp_path / 'dynamic.py'), str(tmp_path / 'dynamic.pth')
    cfg.dump(config)
    torch.manual_seed(3)
    model = build_detector(cfg.model, served_model['checkpoint'],
                           partial='split')  # the exit stays random
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    dataset = build_test_dataset(cfg)
    with torch.no_grad():
        preds = {r.img_id: r for inputs, samples in iter_batches(model, dataset, batch_size=4)
                 for r in model.predict(inputs, samples)}
    out, timings = tmp_path / 'results.json', tmp_path / 'timings.json'
    root = served_model['data_root']
    assert edge_client.main([config, ckpt, '--server', server, '--source',
                             osp.join(root, 'val'), '--token-file', token_file, '--ann-file',
                             osp.join(root, 'annotations', 'instances_val.json'), '--out',
                             str(out), '--timings', str(timings)]) == 0
    rows = {r['img_id']: r for r in json.loads(timings.read_text())['images']}
    assert {r['tier'] for r in rows.values()} == {'cloud', 'edge_main'}
    for r in rows.values():  # every image sent something: features, or its report
        assert r['bytes'] > 0 and (r['tier'] == 'cloud') == (r['server_ms'] is not None)
    received = [line for line in httpx.get(server + '/metrics').text.splitlines()
                if line.startswith('ecc_requests_total{route="report",status="200"}')]
    n_edge = sum(r['tier'] == 'edge_main' for r in rows.values())
    assert received and float(received[0].split()[-1]) >= n_edge
    results = json.loads(out.read_text())
    for img_id, res in preds.items():
        inst = res.pred_instances
        got = [r for r in results if r['image_id'] == img_id]
        assert len(got) == len(inst) > 0, (img_id, rows[img_id]['tier'])
        for r, box, score, label in zip(got, inst.bboxes.tolist(), inst.scores.tolist(),
                                        inst.labels.tolist()):
            assert r['category_id'] == dataset.cat_ids[label]
            x, y, w, h = r['bbox']
            assert [x, y, x + w, y + h] == pytest.approx(box, abs=1e-2)
            assert r['score'] == pytest.approx(score, abs=1e-5)
    offloaded = sum(r['tier'] == 'cloud' for r in rows.values())
    assert f'4 images, {offloaded} offloaded, {4 - offloaded} finished on the edge' \
        in capsys.readouterr().out


def test_edge_runner_payloads_and_idempotent_resend(served_model, reference, server, tmp_path):
    import cv2
    import export_edge_cloud

    from ecc_mmdet.serving.client import CloudClient, CloudRequestError, EdgeRunner
    from ecc_mmdet.utils import ConfigError
    cfg, ckpt = served_model['config'], served_model['checkpoint']
    img_id, (path, expected) = next(iter(reference['payloads'].items()))
    runner = EdgeRunner(cfg, ckpt)
    res = runner.process(path, img_id)
    assert res.tier == 'cloud' and res.payload == expected and res.detections is None
    assert {'load', 'preprocess', 'edge', 'encode'} <= set(res.timings_ms)
    # an OpenCV frame (BGR array) gives the very same payload as the file
    assert runner.process(cv2.imread(path), img_id).payload == expected
    # the edge-only export loads strictly and codes identically; the cloud export is refused
    assert export_edge_cloud.main([cfg, ckpt, '--out-dir', str(tmp_path)]) == 0
    assert EdgeRunner(cfg, str(tmp_path / 'edge.pth')).process(path, img_id).payload == expected
    with pytest.raises(ConfigError, match='cloud-only'):
        EdgeRunner(cfg, str(tmp_path / 'cloud.pth'))

    with CloudClient(server, TOKEN, concurrency=2) as client:
        assert TOKEN not in repr(client)
        first = client.send(expected, 'edge-client-test-1')
        again = client.send(expected, 'edge-client-test-1')  # a retry after a lost answer
        assert 'replayed' not in first and again['replayed'] is True
        assert again['detections'] == first['detections'] and first['detections']
        assert first['retries'] == again['retries'] == 0
    with CloudClient(server, 'wrong-token') as client:
        with pytest.raises(CloudRequestError) as e:
            client.send(expected, 'edge-client-test-2')
    assert e.value.status == 403 and e.value.error == 'Forbidden'
    assert 'wrong-token' not in str(e.value)


# ------------------------------------------------------------- scripted server: retry paths
class Scripted(http.server.ThreadingHTTPServer):
    """Answers POSTs from a script of (status, headers, body) or 'drop' (close the connection
    without answering: a lost response); records each request's id, body and auth header."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        super().__init__(('127.0.0.1', 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f'http://127.0.0.1:{self.server_address[1]}'

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        srv = self.server
        srv.seen.append((self.headers['Idempotency-Key'], body, self.headers['Authorization']))
        step = srv.script.pop(0) if len(srv.script) > 1 else srv.script[0]
        if step == 'drop':
            self.close_connection = True
            return
        status, headers, answer = step
        data = json.dumps(answer).encode()
        self.send_response(status)
        for k, v in {**headers, 'Content-Type': 'application/json',
                     'Content-Length': str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


OK = (200, {}, dict(detections=[], image_size=[4, 4], timings_ms=dict(server=1.0)))
BUSY = (503, {'Retry-After': '0'}, dict(error='QueueFull', detail='queue full'))


def test_retries_reuse_the_request_id():
    from ecc_mmdet.serving.client import CloudClient
    with Scripted([BUSY, 'drop', BUSY, OK]) as srv, \
            CloudClient(srv.url, TOKEN, backoff_s=0.01) as client:
        answer = client.send(b'payload', 'img-7')
    assert answer['retries'] == 3 and answer['client_ms'] >= answer['attempt_ms'] > 0
    assert [s[:2] for s in srv.seen] == [('img-7', b'payload')] * 4
    assert all(s[2] == f'Bearer {TOKEN}' for s in srv.seen)


def test_final_refusals_and_giving_up():
    from ecc_mmdet.serving.client import (CloudClient, CloudRequestError,
                                          CloudUnavailableError)
    mismatch = (409, {}, dict(error='ModelMismatchError', detail='another model'))
    with Scripted([mismatch]) as srv, CloudClient(srv.url, TOKEN, backoff_s=0.01) as client:
        with pytest.raises(CloudRequestError) as e:
            client.send(b'x', 'a')
        assert len(srv.seen) == 1  # refusals are final: no retry
        assert (e.value.status, e.value.error) == (409, 'ModelMismatchError')
        with pytest.raises(ValueError, match='request id'):
            client.send(b'x', 'no spaces allowed')
        with pytest.raises(ValueError, match='request id'):
            client.send(b'x', 'a\n')
    with pytest.raises(ValueError, match='visible ASCII') as e:
        CloudClient('http://127.0.0.1:9', TOKEN + '\n')
    assert TOKEN not in str(e.value)
    with Scripted([BUSY]) as srv, CloudClient(srv.url, TOKEN, max_retries=2,
                                              backoff_s=0.01) as client:
        with pytest.raises(CloudUnavailableError, match='gave up after 3 attempts') as e:
            client.send(b'x', 'b')
        assert e.value.status == 503 and len(srv.seen) == 3
    with Scripted([OK]) as srv:
        url = srv.url  # a port nobody listens on once this server is closed
    with CloudClient(url, TOKEN, max_retries=1, backoff_s=0.01) as client:
        with pytest.raises(CloudUnavailableError) as e:
            client.send(b'x', 'c')
    assert e.value.status is None and e.value.attempts == 2 and TOKEN not in str(e.value)


# ---------------------------------------------------------------------- tool input errors
@pytest.mark.parametrize('case', ['missing', 'empty', 'not_a_video', 'camera', 'no_token',
                                  'bad_token'])
def test_bad_sources_exit_2_with_one_line(case, served_model, tmp_path, token_file, capsys,
                                          monkeypatch):
    import edge_client
    monkeypatch.delenv('ECC_SERVE_TOKEN', raising=False)
    source = {'missing': tmp_path / 'nowhere', 'empty': tmp_path,
              'not_a_video': tmp_path / 'notes.txt', 'camera': 'camera:x',
              'no_token': served_model['data_root'],
              'bad_token': served_model['data_root']}[case]
    (tmp_path / 'notes.txt').write_text('not a video')
    if case == 'bad_token':  # e.g. the wrong file: it must not end up in a message
        (tmp_path / 'bad').write_text(TOKEN + '\nsecond line')
        token_file = str(tmp_path / 'bad')
    token = [] if case == 'no_token' else ['--token-file', token_file]
    code = edge_client.main([served_model['config'], served_model['checkpoint'], '--server',
                             'http://127.0.0.1:9', '--source', str(source), *token])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith('error: ') and '\n' not in err
    assert {'missing': 'no such folder', 'empty': 'no images', 'not_a_video': 'cannot read',
            'camera': 'camera:N', 'no_token': 'no bearer token',
            'bad_token': 'one word of visible ASCII'}[case] in err
    assert TOKEN not in err


def test_uncalibrated_dynamic_models_are_refused_up_front(served_model, tmp_path):
    """A target offload ratio and score maps come from the calibration split: a server or an
    edge built without them says so at startup instead of failing every request."""
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import build_detector, load_config
    from ecc_mmdet.serving.client import EdgeRunner
    from ecc_mmdet.serving.runtime import CloudRuntime
    from ecc_mmdet.utils import ConfigError
    cfg = load_config(served_model['config'])
    cfg.model.update(edge_exit=EXIT, calibrate_scores=True,
                     router=dict(type='EntropyRouter', target_offload_ratio=0.5))
    config, ckpt = str(tmp_path / 'dyn.py'), str(tmp_path / 'dyn.pth')
    cfg.dump(config)
    model = build_detector(cfg.model, served_model['checkpoint'], partial='split')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    with pytest.raises(ConfigError, match='no score map|none is fitted'):
        CloudRuntime(model)
    with pytest.raises(ConfigError, match='no calibrated threshold'):
        EdgeRunner(config, ckpt)
