"""Online adaptation across the network: the /v1/adapt/* routes of a real ``serve_cloud.py
--adapt`` subprocess on loopback (every refusal of the issue's "Bad input", the state surviving
a restart, an adapted edge's payloads accepted), the client's retries, and the benchmark through
the server giving the in-process numbers. Tiny models, as in test_online_adaptation.py."""
import asyncio
import copy
import json
import os.path as osp

import httpx
import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.runner import save_checkpoint

import ecc_mmdet  # noqa: F401
from ecc_edge.client import CloudClient, CloudRequestError
from ecc_edge.codecs import BitstreamError, ImageCodecId, ImageMeta, pack_image
from ecc_mmdet.apis import build_detector, load_config
from ecc_mmdet.datasets.transforms import CompressImage
from ecc_mmdet.deployment.fingerprint import model_fingerprint
from ecc_mmdet.deployment.param_update import apply_param_update, edge_norm_parameters

from conftest import REPO, fake_batch
from serving_utils import TOKEN, cloud_server

CEMA_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_cema.py')
TEACHER_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
WIDTH, SIZE = 8, 64
AUTH = {'Authorization': f'Bearer {TOKEN}'}
CODEC = CompressImage(codec='webp', quality=90)


def _narrow(model_cfg):
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.backbone.base_channels = WIDTH
    model_cfg.neck.in_channels = [WIDTH * 2**i for i in range(4)]
    return model_cfg


@pytest.fixture(scope='module')
def files(tiny_coco_calib, tmp_path_factory):
    """A narrow CEMA config (teacher files, a 1-step cloud on 2-image batches, one fog stream)
    and a student initialised from the seeded teacher, as files."""
    d = tmp_path_factory.mktemp('adapt')
    tcfg = load_config(TEACHER_CFG)
    tcfg.model = _narrow(tcfg.model)
    tcfg.dump(str(d / 'teacher_cfg.py'))
    torch.manual_seed(0)
    teacher = MODELS.build(tcfg.model).eval()
    cfg = load_config(CEMA_CFG, data_root=tiny_coco_calib)
    cfg.model = _narrow(cfg.model)
    student = build_detector(cfg.model)
    student.load_state_dict(teacher.state_dict(), strict=False)
    student.eval()  # coding tables built
    paths = dict(config=str(d / 'cema.py'), checkpoint=str(d / 'student.pth'),
                 teacher=str(d / 'teacher.pth'), data_root=tiny_coco_calib, dir=d)
    save_checkpoint({'state_dict': teacher.state_dict(), 'meta': {}}, paths['teacher'])
    save_checkpoint({'state_dict': student.state_dict(), 'meta': {}}, paths['checkpoint'])
    cfg.teacher_config, cfg.teacher_checkpoint = str(d / 'teacher_cfg.py'), paths['teacher']
    cfg.custom_hooks[0].num_images = 8
    cfg.test_dataloader.batch_size = 2
    cfg.test_cfg.update(corruptions=[('fog', 3)], update_interval=1, log_interval=0,
                        selector=dict(cfg.test_cfg.selector, warmup=2),
                        cloud=dict(steps=1, batch_size=2, score_thr=0.0))
    cfg.dump(paths['config'])
    return paths


@pytest.fixture(scope='module')
def edge(files):
    """The edge model as deployed (the student's checkpoint)."""
    return build_detector(load_config(files['config']).model, files['checkpoint']).eval()


def _image_message(i, fingerprint):
    g = np.random.default_rng(i)
    img = (g.random((SIZE, SIZE, 3)) * 200 + 20).astype(np.uint8)
    meta = ImageMeta((SIZE, SIZE), (SIZE, SIZE), None, (1.0, 1.0))
    return pack_image(CODEC.encode(img).tobytes(), ImageCodecId.WEBP, img.shape, meta,
                      fingerprint)


def _post(url, path, data=b'', headers=None, ctype='application/octet-stream', **kw):
    return httpx.post(url + path, content=data, timeout=120, **kw,
                      headers={**AUTH, 'Content-Type': ctype, **(headers or {})})


def _register(url, edge_id, fingerprint, reset=False):
    body = json.dumps(dict(fingerprint=fingerprint.hex(), reset=reset)).encode()
    return _post(url, f'/v1/adapt/edges/{edge_id}', body, ctype='application/json')


def _refused(resp, status, error):
    assert resp.status_code == status, resp.text
    assert resp.json()['error'] == error, resp.text


def _states(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _detect(url, model, edge_id=None, seq=None):
    inputs, samples = fake_batch(model, n=1, size=SIZE, seed=3)
    payload = model.encode(inputs, samples)[0]
    extra = {} if edge_id is None else {'Ecc-Edge-Id': edge_id, 'Ecc-Param-Seq': str(seq)}
    return _post(url, '/v1/detect', payload, extra)


def _server(files, log_dir, state_dir):
    return cloud_server(files, log_dir, '--adapt', '--adapt-state-dir', state_dir,
                        '--adapt-max-edges', 2, '--adapt-max-pending', 2, '--data-root',
                        files['data_root'])


def test_every_refusal_of_bad_input_and_the_state_survives_a_restart(files, edge, tmp_path):
    fp = model_fingerprint(edge)
    other = copy.deepcopy(edge)
    with torch.no_grad():
        other.backbone.conv1.weight.mul_(1.01)  # another base model
    state_dir = str(tmp_path / 'states')
    with _server(files, tmp_path, state_dir) as (url, _):
        assert _register(url, 'cam-1', fp).json() == dict(edge_id='cam-1', seq=0, num_skipped=0)
        _refused(_register(url, 'cam-2', model_fingerprint(other)), 409, 'ModelMismatchError')
        _refused(_post(url, '/v1/adapt/edges/cam-2', b'{"fingerprint": 5}',
                       ctype='application/json'), 400, 'BadRequest')
        _refused(_post(url, '/v1/adapt/round'), 400, 'BadRequest')  # no edge id
        with CloudClient(url, TOKEN, retry_for=30) as client:
            first = _uploads_and_rounds(url, client, fp, other)
        assert _register(url, 'cam-2', fp).status_code == 200
        _refused(_register(url, 'cam-3', fp), 429, 'UploadLimitError')  # max 2 edges
        _check_edge_side_refusals(edge, other, first.data)
        adapted = _adapted(edge, first.data)
        # the adapted edge's payloads are decoded; parameters the cloud never issued are not
        assert _detect(url, adapted, 'cam-1', 1).status_code == 200
        assert _detect(url, adapted).status_code == 200
        _refused(_detect(url, adapted, 'cam-1', 3), 409, 'UpdateAheadError')
        _refused(_detect(url, other), 409, 'ModelMismatchError')
        # a round retried with its request id is answered once (no update 3)
        again = [_post(url, '/v1/adapt/round', headers={'Ecc-Edge-Id': 'cam-1',
                                                        'Idempotency-Key': 'round-7'})
                 for _ in range(2)]
        assert [r.headers['ecc-param-seq'] for r in again] == ['2', '2']
        assert again[0].content == again[1].content and again[1].headers['ecc-replayed'] == '1'
    with _server(files, tmp_path, state_dir) as (url, _):  # restarted: every edge continues
        with CloudClient(url, TOKEN, retry_for=30) as client:
            assert client.register_edge('cam-1', fp)['seq'] == 2
            assert client.fetch_update('cam-1', 0) == (again[0].content, 2, ())
            assert _detect(url, adapted, 'cam-1', 1).status_code == 200
            assert client.register_edge('cam-2', fp)['seq'] == 0
            assert client.register_edge('cam-1', fp, reset=True)['seq'] == 0
        _refused(_detect(url, adapted, 'cam-1', 1), 409, 'UpdateAheadError')  # after the reset


def _uploads_and_rounds(url, client, fp, other):
    """Uploads (refused: unknown edge, malformed, another base model, malformed headers, over
    the per-edge limit of 2), a round and the updates after it -> the round's answer."""
    hdr = {'Ecc-Edge-Id': 'cam-1', 'Ecc-Image-Id': '1'}
    _refused(_post(url, '/v1/adapt/upload', _image_message(0, fp),
                   {**hdr, 'Ecc-Edge-Id': 'nobody'}), 404, 'UnknownEdgeError')
    _refused(_post(url, '/v1/adapt/upload', _image_message(0, fp)[:-9], hdr), 400,
             'TruncatedBitstreamError')
    _refused(_post(url, '/v1/adapt/upload', _image_message(0, model_fingerprint(other)),
                   hdr), 409, 'ModelMismatchError')
    _refused(_post(url, '/v1/adapt/upload', _image_message(0, fp),
                   {**hdr, 'Ecc-Image-Id': '1,2'}), 400, 'BadRequest')
    up = client.upload_for_adaptation('cam-1', [_image_message(i, fp) for i in (1, 2)], [1, 2])
    assert up['image_ids'] == [1, 2] and up['pending'] == 2
    assert len(up['detections']) == 2 and all(up['detections'])
    with pytest.raises(CloudRequestError) as e:  # final at once: only a round makes room
        client.upload_for_adaptation('cam-1', [_image_message(3, fp)], [3])
    assert (e.value.status, e.value.error) == (429, 'UploadLimitError')
    # a round: the update, its sequence number and the images it trained on
    answer = client.adapt_round('cam-1')
    assert answer.seq == 1 and answer.trained_on == (1, )  # one step, one new image
    assert client.fetch_update('cam-1', 0).data == answer.data
    assert client.fetch_update('cam-1', 1) is None
    with pytest.raises(CloudRequestError) as e:  # past the cloud's latest
        client.fetch_update('cam-1', 5)
    assert (e.value.status, e.value.error) == (409, 'UpdateAheadError')
    return answer


def _adapted(edge, update):
    """The edge after the update and a batch-norm re-estimation (NormStats): its fingerprint
    is the base model's."""
    from ecc_mmdet.adaptation import NormStats
    model = copy.deepcopy(edge)
    assert apply_param_update(model, update, 0) == 1
    learner = NormStats()
    learner.attach(model)
    learner.step(model, fake_batch(model, n=2, size=SIZE, seed=5)[0])
    model.eval()
    assert model_fingerprint(model) == model_fingerprint(edge)
    return model


def _check_edge_side_refusals(edge, other, update):
    """A PARAM_UPDATE for another base model, an older sequence number or a malformed body:
    refused, and the edge keeps its parameters."""
    model = copy.deepcopy(edge)
    assert apply_param_update(model, update, 0) == 1
    before = _states(model)
    for target, data, last in ((model, update, 1), (model, update[:-7], 0),
                               (model, update[:30] + bytes([update[30] ^ 1]) + update[31:], 0)):
        with pytest.raises(BitstreamError):
            apply_param_update(target, data, last)
        assert _unchanged(model, before)
    theirs = copy.deepcopy(other)
    before = _states(theirs)
    with pytest.raises(BitstreamError, match='(?i)model|fingerprint'):
        apply_param_update(theirs, update, 0)
    assert _unchanged(theirs, before)
    assert any(not torch.equal(v, edge_norm_parameters(edge)[k])
               for k, v in edge_norm_parameters(model).items())


def _timeless(x):
    """``x`` without its wall-clock ``seconds``."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if k != 'seconds'}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


def test_the_benchmark_through_the_server_gives_the_in_process_numbers(files, tmp_path,
                                                                       monkeypatch):
    """tools/benchmark_online_adaptation.py --through-server: the same rows, summary and table
    as in process (CEMA's selection, and uploading everything: an update after each batch)."""
    import benchmark_online_adaptation as bench
    from ecc_mmdet.adaptation.remote import RemoteEdgeAdaptation
    rounds, real = [], RemoteEdgeAdaptation.round
    monkeypatch.setattr(RemoteEdgeAdaptation, 'round', lambda self: rounds.append(1) or real(self))
    common = [files['config'], files['checkpoint'], '--data-root', files['data_root'],
              '--num-images', '4', '--corruptions', 'fog', '--severities', '3', '--methods',
              'none', 'cema', 'upload_all']
    here = bench.main(common + ['--out', str(tmp_path / 'here.json')])
    assert not rounds
    served = bench.main(common + ['--through-server', '--out', str(tmp_path / 'served.json')])
    assert served.pop('through_server') is True and 'through_server' not in here
    assert _timeless(served) == _timeless(here)
    upload_all = served['rows'][-1]
    assert upload_all['method'] == 'upload_all' and upload_all['num_updates'] == 2
    assert len(rounds) == 4  # after each of the 2 batches, for CEMA and for upload_all
    assert bench.table(served) == bench.table(here)


def test_client_retries_a_busy_server_but_not_a_full_edge(monkeypatch):
    """429 TooManyConnections / 503 AdaptationBusy are retried with the same request id; 429
    UploadLimitError is final (only a round makes room)."""
    answers = [(429, 'TooManyConnections'), (503, 'AdaptationBusy'), (200, None),
               (429, 'UploadLimitError')]
    seen = []

    def handler(request):
        seen.append((request.url.path, request.headers['idempotency-key'],
                     request.headers['ecc-image-id'], request.headers['ecc-image-bytes']))
        status, error = answers.pop(0)
        if error:
            return httpx.Response(status, json=dict(error=error, detail='x'),
                                  headers={'Retry-After': '0'})
        return httpx.Response(200, json=dict(image_ids=[4, 5], detections=[[], []]))

    client = CloudClient('http://cloud', TOKEN, retry_for=30, backoff_s=0.0)
    client._http = httpx.Client(base_url=client.base_url, transport=httpx.MockTransport(handler))
    up = client.upload_for_adaptation('cam-1', [b'abc', b'de'], [4, 5])
    assert up['image_ids'] == [4, 5] and len(seen) == 3
    assert len({key for _, key, _, _ in seen}) == 1  # one request, retried
    assert seen[0] == ('/v1/adapt/upload', seen[0][1], '4,5', '3,2')
    with pytest.raises(CloudRequestError) as e:
        client.upload_for_adaptation('cam-1', [b'abc'], [6])
    assert e.value.status == 429 and len(seen) == 4 and not answers
    with pytest.raises(ValueError, match='edge id'):
        client.adapt_round('no spaces')


def _call(service, action, headers=None, params=None, body=b''):
    async def chunks():
        yield body

    async def run():
        return await service.adapt(action, {'authorization': f'Bearer {TOKEN}',
                                            **(headers or {})}, chunks(), params or {})
    return asyncio.run(run())


class _SlowHub:
    """A hub whose rounds wait for ``go``; one registered edge at update 0."""
    def __init__(self):
        import threading
        self.go, self.edges = threading.Event(), {'cam-1': type('E', (), dict(seq=0))()}

    def round(self, edge_id):
        self.go.wait(30)
        return None, set()

    def edge_seq(self, edge_id):
        return 0


def test_service_without_adaptation_and_a_bounded_number_of_rounds():
    from ecc_mmdet.serving.adaptation_service import AdaptationService
    from ecc_mmdet.serving.service import CloudService
    svc = CloudService(runtime=None, token=TOKEN)
    off = _call(svc, 'round', {'ecc-edge-id': 'cam-1'})
    assert (off.status, off.body['error']) == (404, 'AdaptationDisabled')
    assert _call(svc, 'round', {'authorization': 'Bearer no'}).status == 403
    hub = _SlowHub()
    svc.adaptation = AdaptationService(hub, max_in_flight=1)

    async def two_rounds():
        async def chunks():
            yield b''
        headers = {'authorization': f'Bearer {TOKEN}', 'ecc-edge-id': 'cam-1'}
        first = asyncio.ensure_future(svc.adapt('round', headers, chunks(), {}))
        await asyncio.sleep(0.2)  # the first round holds the only slot, in a worker thread
        second = await svc.adapt('round', headers, chunks(), {})
        hub.go.set()
        return await first, second
    first, second = asyncio.run(two_rounds())
    assert first.status == 204 and first.headers['Ecc-Param-Seq'] == '0'
    assert (second.status, second.body['error']) == (503, 'AdaptationBusy')
    assert second.headers['Retry-After'] == '1'
    # /v1/detect's parameter check: half a pair, an unknown edge, parameters never issued
    check = svc.adaptation.check_params
    assert check({}) is None and check({'ecc-edge-id': 'cam-1', 'ecc-param-seq': '0'}) is None
    assert check({'ecc-edge-id': 'cam-1'}).status == 400
    assert check({'ecc-edge-id': 'cam-9', 'ecc-param-seq': '0'}).status == 404
    assert check({'ecc-edge-id': 'cam-1', 'ecc-param-seq': '1'}).body['error'] == \
        'UpdateAheadError'


def test_serve_cloud_adapt_refuses_a_missing_teacher_or_a_model_without_an_exit(
        files, served_model, capsys):
    """One ``error:`` line and exit 2, before serving (the teacher is checked first)."""
    import serve_cloud
    nowhere = str(files['dir'] / 'nowhere.pth')
    assert serve_cloud.main([files['config'], files['checkpoint'], '--insecure-no-auth',
                             '--adapt', '--adapt-teacher-checkpoint', nowhere]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'nowhere.pth' in err
    teacher = ['--adapt-teacher-config', str(files['dir'] / 'teacher_cfg.py'),
               '--adapt-teacher-checkpoint', files['teacher']]
    assert serve_cloud.main([served_model['config'], served_model['checkpoint'],
                             '--insecure-no-auth', '--adapt', *teacher]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'dynamic split detector' in err
