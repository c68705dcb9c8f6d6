"""The cloud's per-edge adaptation state: IMAGE uploads decoded as CompressImage decodes them,
specific refusals that change nothing, update sequence numbers, separate edges, and a restart
that continues bit-identically. Tiny models, as in test_online_adaptation.py."""
import copy
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS

import ecc_mmdet  # noqa: F401
from ecc_edge.codecs import (BitstreamError, CorruptedBitstreamError, ImageCodecId, ImageMeta,
                             MessageType, ModelMismatchError, Payload, pack, pack_image)
from ecc_mmdet.adaptation import AdaptationHub, CloudAdapter, EdgeAdaptation, UpdateAheadError
from ecc_mmdet.adaptation.cloud_state import decode_upload
from ecc_mmdet.adaptation.learners import running_stats
from ecc_mmdet.apis import load_config
from ecc_mmdet.datasets.transforms import CompressImage
from ecc_mmdet.deployment.fingerprint import model_fingerprint
from ecc_mmdet.deployment.param_update import (StaleUpdateError, apply_param_update,
                                               edge_norm_parameters, make_param_update)
from ecc_mmdet.distillation import DetectionDistiller
from ecc_mmdet.errors import UnknownEdgeError, UploadLimitError

from conftest import REPO

WIDTH, SIZE = 8, 64
CLOUD = dict(lr=0.05, steps=2, batch_size=2, new_fraction=0.5, score_thr=0.0, seed=3)
OTHER_MODEL = bytes(range(8))


def _tiny(name, seed):
    cfg = copy.deepcopy(load_config(osp.join(REPO, 'configs', name)).model)
    cfg.backbone.base_channels = WIDTH
    cfg.neck.in_channels = [WIDTH * 2**i for i in range(4)]
    torch.manual_seed(seed)
    return MODELS.build(cfg).eval()


@pytest.fixture(scope='module')
def edge_model():
    return _tiny('ecc_faster_rcnn_r18_synthetic_cema.py', 0)


@pytest.fixture(scope='module')
def distiller():
    d = DetectionDistiller()
    d.teacher = _tiny('faster_rcnn_r18_fpn_synthetic.py', 1)
    return d


CODEC = CompressImage(codec='webp', quality=90)


def _image(i):
    g = np.random.default_rng(i)
    return (g.random((SIZE, SIZE, 3)) * 80 + 100 + 40 * np.sin(np.arange(SIZE) / (3 + i))[:, None,
                                                                                          None]
            ).astype(np.uint8)


def _message(i, fingerprint, meta=None, shape=(SIZE, SIZE, 3)):
    meta = meta or ImageMeta((SIZE // 2, SIZE // 2), (SIZE, SIZE), None, (2.0, 2.0))
    return pack_image(CODEC.encode(_image(i)).tobytes(), ImageCodecId.WEBP, shape, meta,
                      fingerprint)


def _same(a, b) -> bool:
    """Deep equality of state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _hub(edge_model, distiller, state_dir=None, **kw):
    return AdaptationHub(edge_model, distiller, CLOUD, state_dir=state_dir, **kw)


def test_an_upload_is_decoded_as_compress_image_decodes_it(edge_model, distiller):
    fp = model_fingerprint(edge_model)
    edge = EdgeAdaptation(edge_model, distiller, CloudAdapter(**CLOUD), fp)
    (scored, ) = edge.upload([_message(0, fp)], [7])
    ((image, sample), ) = edge.adapter.pending
    want = CODEC.transform({'img': _image(0)})['img']
    assert torch.equal(image, torch.from_numpy(want.transpose(2, 0, 1).copy()))
    assert sample.metainfo['img_id'] == scored.metainfo['img_id'] == 7
    assert sample.metainfo['scale_factor'] == (2.0, 2.0) and len(sample.gt_instances)
    # the teacher's detections come back in original-image coordinates (half the input's)
    assert len(scored.pred_instances) and scored.pred_instances.bboxes.max() <= SIZE / 2 + 1e-3
    # the shared teacher keeps its own statistics; the edge's copy moved (adapt_teacher)
    assert _same(running_stats(distiller.teacher), edge.adapter._teacher_state)
    assert not _same(edge.teacher_stats, edge.adapter._teacher_state)


def test_update_sequence_numbers(edge_model, distiller):
    fp = model_fingerprint(edge_model)
    edge = EdgeAdaptation(edge_model, distiller, CloudAdapter(**CLOUD), fp, affine_only=False)
    assert edge.round() == (None, set()) and edge.seq == 0  # nothing to learn yet
    assert edge.update_after(0) is None and edge.update_after(-1) is None
    with pytest.raises(UpdateAheadError):
        edge.update_after(1)  # the edge claims parameters this cloud never issued
    edge.upload([_message(i, fp) for i in range(2)], [0, 1])  # one upload of two images
    update, used = edge.round()
    assert used == {0, 1} and edge.seq == 1
    assert edge.update_after(0) == edge.update_after(-1) == update
    assert edge.update_after(1) is None
    with pytest.raises(UpdateAheadError, match='issued only 1'):
        edge.update_after(2)
    # the edge applies it all or nothing, and keeps its fingerprint (it stays decodable)
    device = copy.deepcopy(edge_model)
    assert apply_param_update(device, update, -1) == 1
    assert model_fingerprint(device) == fp
    assert all(torch.equal(v, edge_norm_parameters(edge.adapter.model)[k])
               for k, v in edge_norm_parameters(device).items())
    before = copy.deepcopy(device.state_dict())
    with pytest.raises(StaleUpdateError):
        apply_param_update(device, update, 1)
    assert _same(before, device.state_dict())


def _snapshot(hub, edge_id):
    path = osp.join(hub.state_dir, f'{edge_id}.pt')
    with open(path, 'rb') as fh:
        return hub.edges[edge_id].state_dict(), fh.read(), running_stats(hub.distiller.teacher)


def _forged_meta(fp):
    """A valid CRC around a meta whose image does not fit in the uploaded one."""
    return pack(Payload(ImageCodecId.WEBP, (SIZE, SIZE, 3),
                        ImageMeta((SIZE, SIZE * 2), (SIZE, SIZE * 2)),
                        body=CODEC.encode(_image(0)).tobytes(), msg_type=MessageType.IMAGE,
                        fingerprint=fp))


def _bad_uploads(fp):
    good = _message(0, fp)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10
    big = CompressImage(codec='webp', quality=90).encode(np.zeros((SIZE * 2, SIZE * 2, 3),
                                                                  np.uint8))
    return [
        ('edge-b', good, UnknownEdgeError),  # never registered
        ('edge a', good, UnknownEdgeError),  # not even a valid id
        ('edge-a', good[:-1], BitstreamError),
        ('edge-a', bytes(flipped), CorruptedBitstreamError),
        ('edge-a', _forged_meta(fp), CorruptedBitstreamError),
        ('edge-a', _message(0, OTHER_MODEL), ModelMismatchError),  # another base model
        ('edge-a', pack_image(b'RIFF\0\0\0\0WEBPjunk', ImageCodecId.WEBP, (SIZE, SIZE, 3),
                              ImageMeta((SIZE, SIZE), (SIZE, SIZE)), fp),
         CorruptedBitstreamError),  # does not decode
        ('edge-a', pack_image(big.tobytes(), ImageCodecId.WEBP, (SIZE, SIZE, 3),
                              ImageMeta((SIZE, SIZE), (SIZE, SIZE)), fp),
         CorruptedBitstreamError),  # more pixels than it declares
        ('edge-a', b'not a message', CorruptedBitstreamError),
    ]


def test_refusals_are_specific_and_change_nothing(edge_model, distiller, tmp_path):
    hub = _hub(edge_model, distiller, str(tmp_path), max_edges=1, max_pending=2)
    fp = hub.fingerprint
    with pytest.raises(ModelMismatchError):
        hub.register('edge-a', OTHER_MODEL)
    with pytest.raises(ValueError):
        hub.register('../edge', fp)
    assert not hub.edges and not os.listdir(tmp_path)
    assert hub.register('edge-a', fp) == dict(edge_id='edge-a', seq=0)
    with pytest.raises(UploadLimitError, match='1 edges'):
        hub.register('edge-c', fp)
    hub.upload('edge-a', [_message(0, fp)], [0])
    before = _snapshot(hub, 'edge-a')
    for edge_id, msg, error in _bad_uploads(fp):
        with pytest.raises(error):
            hub.upload(edge_id, [msg], [9])
    for call in (lambda: hub.round('edge-b'), lambda: hub.update_after('edge-b', 0),
                 lambda: hub.edge_seq('edge-b')):
        with pytest.raises(UnknownEdgeError):
            call()
    with pytest.raises(UpdateAheadError):
        hub.update_after('edge-a', 1)
    assert _same(before, _snapshot(hub, 'edge-a'))
    hub.upload('edge-a', [_message(1, fp)], [1])
    before = _snapshot(hub, 'edge-a')
    with pytest.raises(UploadLimitError, match='per-edge limit'):
        hub.upload('edge-a', [_message(2, fp)], [2])
    assert _same(before, _snapshot(hub, 'edge-a'))
    assert sorted(os.listdir(tmp_path)) == ['edge-a.pt']  # no temp file left
    # registering again keeps the state; reset starts the edge afresh
    assert hub.register('edge-a', fp)['seq'] == 0 and len(hub.edges['edge-a'].adapter.pending)
    hub.register('edge-a', fp, reset=True)
    assert not hub.edges['edge-a'].adapter.pending


def _session(hub, edge_id, images):
    """One upload of ``images`` to ``edge_id`` -> the teacher's detections on them."""
    images = list(images)
    return [r.pred_instances for r in hub.upload(
        edge_id, [_message(i, hub.fingerprint) for i in images], images)]


def _same_detections(a, b):
    return all(torch.equal(x.bboxes, y.bboxes) and torch.equal(x.scores, y.scores)
               for x, y in zip(a, b))


def test_a_restarted_hub_continues_bit_identically(edge_model, distiller, tmp_path):
    straight = _hub(edge_model, distiller)
    first = _hub(edge_model, distiller, str(tmp_path))
    for hub in (straight, first):
        hub.register('edge-a', hub.fingerprint)
        _session(hub, 'edge-a', range(3))
        update1, _ = hub.round('edge-a')
        _session(hub, 'edge-a', [3])
    restarted = _hub(edge_model, distiller, str(tmp_path))
    assert restarted.edge_seq('edge-a') == 1
    assert restarted.update_after('edge-a', 0) == update1
    # the teacher's statistics, the replay buffer, the pending upload, the optimizer and the
    # replay draws all carried over: the next uploads and round give the same bytes
    assert _same_detections(_session(straight, 'edge-a', [4, 5]),
                            _session(restarted, 'edge-a', [4, 5]))
    want, used = straight.round('edge-a')
    got, used_again = restarted.round('edge-a')
    assert want is not None and got == want and used == used_again
    assert _same(restarted.edges['edge-a'].state_dict(), straight.edges['edge-a'].state_dict())


def _plain_adapter(edge_model, distiller, uploads):
    """The reference: one CloudAdapter alone on the teacher, fed the same uploads (lists of
    image numbers) -> (its detections on them, its first update)."""
    fp = model_fingerprint(edge_model)
    ref = CloudAdapter(**CLOUD)
    ref.attach(edge_model, distiller)
    dets = []
    for images in uploads:
        decoded = [decode_upload(_message(i, fp), fp, i) for i in images]
        dets += [d.pred_instances for d in ref.receive([d[0] for d in decoded],
                                                       [d[1] for d in decoded])]
    assert ref.adapt()
    update = make_param_update(ref.model, 1, fp, affine_only=True)
    ref.attach(edge_model, distiller)  # the teacher's statistics as loaded again
    return dets, update


def test_two_edges_keep_separate_states(edge_model, distiller):
    hub = _hub(edge_model, distiller)
    for edge_id in 'ab':
        hub.register(edge_id, hub.fingerprint)
    assert _same_detections(_session(hub, 'a', [0, 1]), _session(hub, 'b', [0, 1]))
    _session(hub, 'a', [2, 3, 4])  # edge a sees more: its teacher statistics move on
    hub.round('a')
    assert not _same(hub.edges['a'].teacher_stats, hub.edges['b'].teacher_stats)
    dets_b = _session(hub, 'b', [5])
    want_dets, want_update = _plain_adapter(edge_model, distiller, [[0, 1], [5]])
    assert _same_detections(dets_b, want_dets[-1:])  # b's teacher saw b's uploads, all of them
    assert hub.round('b')[0] == want_update and hub.edge_seq('b') == 1
    assert [len(hub.edges[e].adapter.buffer) for e in 'ab'] == [5, 3]
