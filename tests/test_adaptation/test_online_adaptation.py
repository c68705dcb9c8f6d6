"""Online adaptation (CEMA for detection): upload selection, the edge-only and cloud learners,
the downlink round trip, and the online loop's predict-before-update order, on tiny models."""
import copy
import json
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS, TASK_UTILS
from mmengine.runner import Runner, save_checkpoint

import ecc_mmdet  # noqa: F401
from ecc_mmdet.adaptation import CloudAdapter, EntropySelector, NormStats, RandomUpload, Tent
from ecc_mmdet.adaptation.learners import norm_affine_parameters
from ecc_mmdet.apis import load_config
from ecc_mmdet.deployment.param_update import (apply_param_update, edge_norm_parameters,
                                               make_param_update)
from ecc_mmdet.distillation import DetectionDistiller
from ecc_mmdet.utils import ConfigError

from conftest import REPO, fake_batch

CEMA_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_cema.py')
TEACHER_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
WIDTH = 8


def _narrow(model_cfg):
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.backbone.base_channels = WIDTH
    model_cfg.neck.in_channels = [WIDTH * 2**i for i in range(4)]
    return model_cfg


# ---------------------------------------------------------------- selection
def test_selection_extremes_upload_all_or_nothing():
    e = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95])
    assert EntropySelector(e_max0=1.0, e_min=0.0, dynamic=False).select(e, range(5)).all()
    assert not EntropySelector(e_max0=0.01, e_min=0.0, dynamic=False).select(e, range(5)).any()
    # the band: unreliable (>= e_max) and low-informative (<= e_min) images stay on the edge
    band = EntropySelector(e_max0=0.8, e_min=0.2, dynamic=False).select(e, range(5))
    assert band.tolist() == [False, True, True, True, False]
    assert RandomUpload(0.0).select(e, range(5)).sum() == 0
    assert RandomUpload(1.0).select(e, range(5)).all()
    keys = list(range(2000))
    r = RandomUpload(0.25, seed=3)
    picks = r.select(torch.zeros(2000), keys)
    assert torch.equal(picks, r.select(torch.zeros(2000), keys))  # a function of seed and key
    assert 0.22 < picks.float().mean() < 0.28


def test_dynamic_upper_bound_follows_the_running_entropy():
    s = EntropySelector(e_max0=0.5, e_min=0.0, dynamic=True, lam=1.0, warmup=4)
    s.select(torch.full((4,), 0.4), range(4))  # warm-up: mean 0.4, bound 0.5
    assert s.e_max == pytest.approx(0.5)
    s.select(torch.full((4,), 0.8), range(4))  # the stream got harder: running mean 0.6
    assert s.e_max == pytest.approx(0.5 * 0.6 / 0.4)
    # an image at 0.7 is now within the bound (it would not have been with the static one)
    assert s.select(torch.tensor([0.7]), [9]).item()
    s.reset()
    assert s.e_max == pytest.approx(0.5) and s.count == 0
    # band mode: bounds are warm-up quantiles and move by the drift of the mean
    b = EntropySelector(band=(0.25, 0.75), warmup=5, budget=False)  # the rule without a budget
    b.select(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), range(5))
    assert (b.e_low, b.e_max) == pytest.approx((0.2, 0.4))
    b.select(torch.full((5,), 0.5), range(5))  # running mean 0.4, warm-up mean 0.3: +0.1
    assert (b.e_low, b.e_max) == pytest.approx((0.3, 0.5))


@pytest.mark.parametrize('kw', [dict(e_max0=0.3, e_min=0.5), dict(lam=0), dict(warmup=0),
                                dict(band=(0.8, 0.2)), dict(band=0.5)])
def test_bad_selector_configs_are_refused(kw):
    with pytest.raises(ConfigError):
        EntropySelector(**kw)


# ---------------------------------------------------------------- learners
@pytest.fixture(scope='module')
def dynamic_model():
    cfg = load_config(CEMA_CFG)
    torch.manual_seed(0)
    return MODELS.build(_narrow(cfg.model)).eval()


@pytest.fixture(scope='module')
def teacher():
    cfg = load_config(TEACHER_CFG)
    torch.manual_seed(1)
    return MODELS.build(_narrow(cfg.model)).eval()


def _states(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize('learner', [NormStats(), Tent(lr=0.05)])
def test_edge_learners_change_only_edge_normalisation_layers(dynamic_model, learner):
    model = copy.deepcopy(dynamic_model)
    before = _states(model)
    learner.attach(model)
    inputs, _ = fake_batch(model, n=2, size=64, seed=3)
    learner.step(model, inputs * 0.3 + 1.0)  # a shifted batch
    after = _states(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    norms = set(edge_norm_parameters(model))
    assert changed and changed <= norms | {k for k in before if k.endswith('num_batches_tracked')}
    if isinstance(learner, Tent):  # the affine parameters moved too, not only the statistics
        assert any(k.endswith(('weight', 'bias')) for k in changed)
    assert not any(m.training for m in model.modules())
    assert all(p.requires_grad == q.requires_grad for p, q in
               zip(model.parameters(), dynamic_model.parameters()))
    affine = {id(p) for p in norm_affine_parameters(model)}
    assert all(p.grad is None for p in model.parameters() if id(p) not in affine)


def test_cloud_adaptation_lowers_the_loss_and_the_downlink_copies_it_exactly(dynamic_model,
                                                                             teacher):
    edge = copy.deepcopy(dynamic_model)
    distiller = DetectionDistiller()
    distiller.teacher = teacher  # built in place of build(): the loop builds it from the config
    cloud = CloudAdapter(lr=0.05, steps=15, batch_size=4, new_fraction=1.0, score_thr=0.0,
                         adapt_teacher=False)
    cloud.attach(edge, distiller)
    g = torch.Generator().manual_seed(5)
    images = [(torch.rand(3, 64, 64, generator=g) * 80 + 100).to(torch.uint8) for _ in range(4)]
    _, samples = fake_batch(edge, n=4, size=64)
    cloud.receive(images, samples)
    items = list(cloud.pending)
    assert all(len(s.gt_instances) > 0 for _, s in items)  # the teacher's boxes are the labels

    def loss():
        with torch.no_grad():
            cloud.model.eval()
            return float(cloud.loss(items))

    first = loss()
    used = cloud.adapt()
    assert used == {s.metainfo['img_id'] for _, s in items}
    assert loss() < first  # adaptation improves the edge model's loss on the shifted images
    assert len(cloud.buffer) == 4 and not cloud.pending
    # an upload in which the teacher finds nothing is kept out of training (skip_empty)
    strict = CloudAdapter(score_thr=1.0, adapt_teacher=False)
    strict.attach(edge, distiller)
    strict.receive(images[:2], samples[:2])
    assert strict.num_skipped == 2 and not strict.pending and strict.adapt() == set()
    # the teacher's BN statistics follow the uploads (CEMA adapts its big model too), it labels
    # in eval mode, and a new stream starts from the checkpoint's statistics again
    t0 = _states(teacher)
    adapting = CloudAdapter(score_thr=0.0, adapt_teacher=True)
    adapting.attach(edge, distiller)
    adapting.receive(images[:2], samples[:2])
    assert not any(m.training for m in teacher.modules())
    moved = [k for k in t0 if 'running_mean' in k and not torch.equal(t0[k],
                                                                      teacher.state_dict()[k])]
    assert moved
    adapting.attach(edge, distiller)
    assert all(torch.equal(t0[k], v) for k, v in teacher.state_dict().items())
    # only the copy's edge normalisation layers moved
    ref, now = _states(dynamic_model), _states(cloud.model)
    changed = {k for k in ref if not torch.equal(ref[k], now[k])}
    assert changed and changed <= set(edge_norm_parameters(edge)) | {
        k for k in ref if k.endswith('num_batches_tracked')}
    # the downlink: the edge ends up with exactly the copy's parameters
    for affine_only in (False, True):
        target = copy.deepcopy(edge)
        msg = make_param_update(cloud.model, 1, target.model_fingerprint(),
                                affine_only=affine_only)
        apply_param_update(target, msg)
        got, want = edge_norm_parameters(target), edge_norm_parameters(cloud.model)
        params = {id(p) for p in norm_affine_parameters(target)}
        for k in want:
            sent = not affine_only or id(got[k]) in params
            ref_t = want[k] if sent else edge_norm_parameters(edge)[k]
            assert torch.equal(got[k], ref_t), k


def test_teacher_with_other_classes_is_refused(dynamic_model):
    cfg = _narrow(load_config(TEACHER_CFG).model)
    cfg.roi_head.bbox_head.num_classes = 3
    distiller = DetectionDistiller()
    distiller.teacher = MODELS.build(cfg)
    with pytest.raises(ConfigError, match='3'):
        distiller.check_classes(dynamic_model)


# ---------------------------------------------------------------- the loop
@pytest.fixture(scope='module')
def loop_files(tiny_coco_calib, tmp_path_factory, dynamic_model, teacher):
    d = tmp_path_factory.mktemp('online')
    student, teach = str(d / 'student.pth'), str(d / 'teacher.pth')
    save_checkpoint({'state_dict': dynamic_model.state_dict(), 'meta': {}}, student)
    save_checkpoint({'state_dict': teacher.state_dict(), 'meta': {}}, teach)
    return dict(student=student, teacher=teach, root=tiny_coco_calib, dir=d)


def _runner(files, tmp_path, **loop):
    cfg = load_config(CEMA_CFG, data_root=files['root'])
    cfg.model = _narrow(cfg.model)
    tcfg = load_config(TEACHER_CFG)
    tcfg.model = _narrow(tcfg.model)
    tpath = str(tmp_path / 'teacher_cfg.py')
    tcfg.dump(tpath)
    cfg.teacher_config, cfg.teacher_checkpoint = tpath, files['teacher']
    cfg.load_from = files['student']
    cfg.work_dir = str(tmp_path)
    cfg.custom_hooks[0].num_images = 8
    cfg.test_dataloader.batch_size = 2
    cfg.test_cfg.update(dict(dict(corruptions=[('gaussian_noise', 3)], update_interval=1,
                                  log_interval=1), **loop))
    cfg.log_level = 'WARNING'
    return Runner.from_cfg(cfg)


def _oracle_teacher(root):
    """``DetectionDistiller.predict`` replaced by a teacher that finds exactly the ground truth
    (in the network input's coordinates, as a detector without rescale gives them)."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    coco = json.load(open(osp.join(root, 'annotations', 'instances_val.json')))
    classes = list(load_config(CEMA_CFG).test_dataloader.dataset.metainfo.classes)
    label = {c['id']: classes.index(c['name']) for c in coco['categories']}
    anns = {}
    for a in coco['annotations']:
        anns.setdefault(a['image_id'], []).append(a)

    def predict(self, batch_inputs, batch_data_samples, rescale=False):
        out = []
        for s in batch_data_samples:
            sx, sy = s.metainfo['scale_factor'][:2]
            mine = anns[s.metainfo['img_id']]
            r = DetDataSample(metainfo=s.metainfo)
            r.pred_instances = InstanceData(
                bboxes=torch.tensor([[x * sx, y * sy, (x + w) * sx, (y + h) * sy]
                                     for x, y, w, h in (a['bbox'] for a in mine)]),
                scores=torch.ones(len(mine)),
                labels=torch.tensor([label[a['category_id']] for a in mine]))
            out.append(r)
        return out
    return predict


def test_loop_scores_every_image_before_any_update_that_used_it(loop_files, tmp_path,
                                                                monkeypatch):
    # a teacher that finds the ground truth: its pseudo labels, scored on the uploads, must
    # have mAP 100 -- which needs the loop to pair every upload's labels with its own image
    monkeypatch.setattr(DetectionDistiller, 'predict', _oracle_teacher(loop_files['root']))
    runner = _runner(loop_files, tmp_path, method='upload_all',
                     cloud=dict(steps=2, batch_size=2, score_thr=0.0))
    metrics = runner.test()
    loop = runner.test_loop
    assert len(loop.predicted_with) == 4 and loop.updates  # 2 batches, an update after each
    trained_by = {}
    for stream, seq, ids in loop.updates:
        trained_by[seq] = set(ids) | trained_by.get(seq - 1, set())
    for stream, img, seq in loop.predicted_with:
        assert img not in trained_by.get(seq, set()), (img, seq)
    assert [s for _, _, s in loop.predicted_with] == [0, 0, 1, 1]  # batch 2 saw update 1
    (res,) = loop.results
    assert res['stream'] == 'gaussian_noise@3' and res['num_images'] == 4
    assert res['upload_ratio'] == 1.0 and res['uplink_adapt_bytes_per_image'] > 0
    assert res['teacher_mAP_on_uploads'] == pytest.approx(100.0)
    # every image was uploaded: the edge's detections scored on the uploads are its online mAP
    assert res['edge_mAP_on_uploads'] == pytest.approx(res['edge_mAP'], abs=1e-9)
    assert res['edge_mAP'] < 100
    assert res['num_updates'] == 2 and res['downlink_bytes_per_update'] > 0
    assert 0 < res['downlink_per_update_ratio'] < 0.05
    assert metrics['gaussian_noise@3/upload_ratio'] == 1.0
    assert osp.isfile(tmp_path / 'online_adaptation.json')
    # the run leaves the model as it was loaded
    ref = torch.load(loop_files['student'], map_location='cpu', weights_only=False)['state_dict']
    now = runner.model.state_dict()
    assert all(torch.equal(ref[k], now[k]) for k in ref)


def test_loop_resets_per_stream_refuses_a_bad_downlink_and_restores_the_model(
        loop_files, tmp_path, monkeypatch):
    import ecc_mmdet.adaptation.cloud_state as mod
    real = mod.make_param_update

    def corrupt_first(model, seq, *a, **kw):
        msg = real(model, seq, *a, **kw)
        return msg[:-5] + bytes([msg[-5] ^ 0xFF]) + msg[-4:] if seq == 1 else msg

    monkeypatch.setattr(mod, 'make_param_update', corrupt_first)
    runner = _runner(loop_files, tmp_path, method='upload_all',
                     corruptions=[('gaussian_noise', 3), ('fog', 3)],
                     cloud=dict(steps=1, batch_size=2, score_thr=0.0))
    runner.test()
    loop = runner.test_loop
    first, second = loop.results
    # update 1 of each stream is corrupted: refused, the edge goes on with its parameters
    assert first['refused_updates'] == second['refused_updates'] == 1
    assert first['num_updates'] == second['num_updates'] == 1
    seqs = {s: [q for st, _, q in loop.predicted_with if st == s] for s in ('gaussian_noise@3',
                                                                            'fog@3')}
    assert seqs == {'gaussian_noise@3': [0, 0, 0, 0], 'fog@3': [0, 0, 0, 0]}  # reset per stream
    ref = torch.load(loop_files['student'], map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.equal(ref[k], v) for k, v in runner.model.state_dict().items() if k in ref)


def test_loop_without_teacher_or_with_bad_settings_fails_clearly(loop_files, tmp_path):
    runner = _runner(loop_files, tmp_path, method='cema')
    runner.cfg.teacher_checkpoint = None
    with pytest.raises(ConfigError, match='teacher_checkpoint'):
        runner.test()
    # a teacher trained on other class names (same count) is refused too
    runner = _runner(loop_files, tmp_path, method='cema')
    tcfg = load_config(runner.cfg.teacher_config)
    classes = list(tcfg.test_dataloader.dataset.metainfo.classes)
    tcfg.test_dataloader.dataset.metainfo.classes = tuple(reversed(classes))
    other = str(tmp_path / 'other_classes.py')
    tcfg.dump(other)
    runner.cfg.teacher_config = other
    with pytest.raises(ConfigError, match='same order'):
        runner.test()
    for bad, match in ((dict(method='magic'), 'method'),
                       (dict(corruptions=[('fogg', 3)]), 'fogg'),
                       (dict(corruptions=[('fog', 9)]), 'severity'),
                       (dict(method='random'), 'random_ratio')):
        cfg = copy.deepcopy(runner.cfg.test_cfg)
        cfg.update(bad)
        with pytest.raises((ConfigError, ValueError), match=match):
            TASK_UTILS.get('EntropySelector')  # registry is importable
            from mmdet.registry import LOOPS
            LOOPS.build(cfg, default_args=dict(runner=runner,
                                               dataloader=runner.cfg.test_dataloader,
                                               evaluator=None))


def test_system_cema_config_has_the_cema_settings_on_the_demo_system():
    """configs/..._system_cema.py has the CEMA config's loop settings (one base,
    configs/_base_/adaptation/cema.py) on the demo's system model."""
    from mmengine.config import Config
    cema = Config.fromfile(CEMA_CFG)
    system = Config.fromfile(osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_system.py'))
    both = Config.fromfile(osp.join(REPO, 'configs',
                                    'ecc_faster_rcnn_r18_synthetic_system_cema.py'))
    assert both.test_cfg.to_dict() == cema.test_cfg.to_dict()
    assert both.model == system.model
