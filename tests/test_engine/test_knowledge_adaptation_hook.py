"""KnowledgeAdaptationHook: frozen teacher outside the student, two-stage freezing, losses, errors.

Tiny models (ResNet-18 at base width 8, 64 px images) keep every test to a few seconds; one test
drives the hook through a real mmengine Runner (fresh start, then resume into stage 2).
"""
import copy
import functools
import math
import os.path as osp
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.runner import Runner, save_checkpoint
from mmdet.registry import HOOKS, MODELS

import ecc_mmdet  # noqa: F401
import ecc_mmdet.engine  # noqa: F401  (registers KnowledgeAdaptationHook)
from ecc_mmdet.distillation import (DetectionDistiller, FeatureKDLoss, ResponseKDLoss,
                                    resolve_path, softmax_kd)
from ecc_mmdet.engine import KnowledgeAdaptationHook
from ecc_mmdet.utils import ConfigError, set_data_root

import conftest  # noqa: E402
from conftest import REPO, TINY_FRCNN, TINY_RETINA, exit_cfg  # noqa: E402

KD_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic_kd.py')
COCO_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn.py')
TABLES = ('_pmf_table', '_pmf_length', '_offset', '_tables_fingerprint', 'quantiles')  # update()
BOTTLENECK = dict(type='EntropyBottleneckNeck', latent_channels=8, beta=0.05)

# narrower still (width 8), BN statistics training, 64 px images with GT boxes, train-mode batches
tiny_model_cfg = functools.partial(conftest.tiny_model_cfg, width=8, norm_eval=False)
fake_batch = functools.partial(conftest.fake_batch, size=64, with_gt=True, training=True)


def student_cfg(cfg, compressor=BOTTLENECK, two_stage=True):
    """A split-after-layer1 student of ``cfg`` (no FLOP counting: these tests only train)."""
    return conftest.split_cfg(cfg, 1, compressor, two_stage, measure_flops=False)


def save_model(model, path):
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, str(path))
    return str(path)


LOGGER = MMLogger.get_instance('test_kd_hook', log_level='WARNING')


class FakeRunner:
    """The attributes of mmengine's Runner the hook reads, for driving it step by step."""

    def __init__(self, model, cfg=None, epoch=0, it=0, max_epochs=2):
        self.model, self.cfg = model, Config(cfg or {})
        self.epoch, self.iter = epoch, it
        self.logger = LOGGER
        self.train_loop = types.SimpleNamespace(max_epochs=max_epochs)
        self._has_loaded = False


def train_steps(model, hook, runner, inputs, samples, optim, n):
    history = []
    model.train()
    for _ in range(n):
        hook.before_train_iter(runner, 0)
        losses = model.loss(inputs, copy.deepcopy(samples))
        loss, log = model.parse_losses(losses)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        history.append({k: v.item() for k, v in log.items()})
    return history


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """An untrained tiny Faster R-CNN whose RoI classifier has opinions: a fresh head outputs
    near-uniform scores, which any student matches already."""
    torch.manual_seed(0)
    teacher = MODELS.build(tiny_model_cfg())
    torch.nn.init.normal_(teacher.roi_head.bbox_head.fc_cls.bias, std=2.0)
    return save_model(teacher, tmp_path_factory.mktemp('t') / 't.pth')


# ---------------------------------------------------------------- direct drive: stages, losses
def test_stages_freeze_exactly_and_distillation_losses_fall(teacher_ckpt):
    torch.manual_seed(1)
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    hook = KnowledgeAdaptationHook(teacher_config=tiny_model_cfg(), teacher_checkpoint=teacher_ckpt,
                                   bottleneck_epochs=1, init_student_from_teacher=False)
    runner = FakeRunner(student)
    hook.before_train(runner)
    teacher = hook.teacher
    teacher_before = snapshot(teacher)
    # the teacher is frozen and nowhere in the student
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(m is teacher for m in student.modules())
    assert set(student.state_dict()) == set(MODELS.build(student_cfg(tiny_model_cfg())).state_dict())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in student.parameters()}

    inputs, samples = fake_batch(student)
    # big weight decay: frozen parameters must not move even so
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.1)
    assert not teacher_ids & {id(p) for g in optim.param_groups for p in g['params']}

    # ---- stage 1: only the compressor (g_a, g_s, entropy model) learns
    before = snapshot(student)
    h1 = train_steps(student, hook, runner, inputs, samples, optim, 30)
    after1 = snapshot(student)
    changed = changed_keys(before, after1)
    comp_params = {'compressor.' + k for k, _ in student.compressor.named_parameters()}
    assert changed == comp_params, sorted(changed ^ comp_params)[:10]
    assert {k.split('.')[1] for k in changed} == {'g_a', 'g_s', 'entropy_model'}
    assert {'loss_kd_feat', 'loss_rate'} <= set(h1[0])
    assert not any(k.startswith(('loss_rpn', 'loss_cls', 'loss_bbox')) for k in h1[0])
    feat = [h['loss_kd_feat'] for h in h1]
    assert all(math.isfinite(v) for v in feat)
    assert feat[-1] < 0.7 * feat[0], feat

    # ---- stage 2: edge frozen (tables fixed), the cloud side learns
    runner.epoch = 1
    for group in optim.param_groups:  # fine-tuning lr, as in the kd config's schedule
        group['lr'] = 2e-4
    hook.before_train_iter(runner, 0)
    em = student.compressor.entropy_model
    assert hook.stage == 2 and not em.training and em.tables_ready()
    tables = {k: v.clone() for k, v in em.state_dict().items() if k in TABLES}
    before = snapshot(student)
    h2 = train_steps(student, hook, runner, inputs, samples, optim, 30)
    after2 = snapshot(student)
    changed = changed_keys(before, after2)
    edge = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.', 'compressor.g_a.',
            'compressor.entropy_model.')
    assert not {k for k in changed if k.startswith(edge)}, 'the edge moved in stage 2'
    assert all(torch.equal(v, em.state_dict()[k]) for k, v in tables.items())
    cloud = {k for k, _ in student.named_parameters() if not k.startswith(edge)}
    assert cloud <= changed, sorted(cloud - changed)[:10]
    assert {k.split('.')[0] for k in cloud} == {'backbone', 'neck', 'rpn_head', 'roi_head',
                                                  'compressor'}
    assert any(k.startswith('compressor.g_s.') for k in cloud)
    assert 'loss_rate' not in h2[0] and h2[0]['rate'] > 0
    assert {'loss_kd_resp', 'loss_rpn_cls', 'loss_cls', 'loss_bbox'} <= set(h2[0])
    resp = [h['loss_kd_resp'] for h in h2]
    assert all(math.isfinite(v) for v in resp)
    assert resp[-1] < 0.7 * resp[0], resp
    # the teacher never changed, BN running statistics included
    assert not changed_keys(teacher_before, snapshot(teacher))
    print(f'\nloss_kd_feat {feat[0]:.4f} -> {feat[-1]:.4f}; '
          f'loss_kd_resp {resp[0]:.4f} -> {resp[-1]:.4f}; '
          f'loss_cls {h2[0]["loss_cls"]:.4f} -> {h2[-1]["loss_cls"]:.4f}')

    hook.after_train(runner)
    assert student.distiller is None


def test_hyperprior_student_both_stages(teacher_ckpt):
    """Stage 2 fixes the hyperprior's coding machinery as deployed: h_a, h_s (the edge computes
    the indexes too), both entropy models and the encoder stay put, the decoder learns, and the
    student codes exactly what its eval forward computes."""
    torch.manual_seed(1)
    hp = dict(type='HyperpriorBottleneckNeck', latent_channels=8, hyper_channels=4,
              hyper_downsample=2, beta=0.05)
    student = MODELS.build(student_cfg(tiny_model_cfg(), compressor=hp))
    hook = KnowledgeAdaptationHook(teacher_config=tiny_model_cfg(), teacher_checkpoint=teacher_ckpt,
                                   bottleneck_epochs=1, init_student_from_teacher=False)
    runner = FakeRunner(student)
    hook.before_train(runner)
    inputs, samples = fake_batch(student)
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.1)
    before = snapshot(student)
    train_steps(student, hook, runner, inputs, samples, optim, 3)
    moved = {k.split('.')[1] for k in changed_keys(before, snapshot(student))}
    assert {'g_a', 'h_a', 'h_s', 'g_s', 'hyper_entropy_model'} <= moved
    runner.epoch = 1
    hook.before_train_iter(runner, 0)
    comp = student.compressor
    assert hook.stage == 2 and not comp.gaussian.training and not comp.hyper_entropy_model.training
    before = snapshot(student)
    h2 = train_steps(student, hook, runner, inputs, samples, optim, 3)
    moved = {k for k in changed_keys(before, snapshot(student)) if k.startswith('compressor.')}
    assert moved and {k.split('.')[1] for k in moved} == {'g_s'}, sorted(moved)
    assert h2[0]['rate'] > 0
    hook.after_train(runner)
    student.eval()
    payloads = student.encode(inputs, samples)
    f = student.edge_features(inputs)
    with torch.no_grad():
        codec = student.payload_codec
        assert torch.equal(codec.decompress(codec.unpack(payloads, samples)),
                           student.compressor(f)[0])


def test_edge_exit_trains_alongside_both_stages_and_exit_only_training_is_refused(teacher_ckpt):
    """A dynamic student (train_exits_only=False): the exit reads the frozen edge's detached
    features, so it learns in stage 1 with the compressor and in stage 2 with the cloud (from
    the labels and the teacher's detections), while the edge stages never move; an exit-only
    model is refused (it trains nothing the hook distils)."""
    torch.manual_seed(1)
    cfg = student_cfg(tiny_model_cfg())
    cfg.edge_exit = dict(exit_cfg(), distill_weight=0.5, pseudo_label_score_thr=0.0)
    student = MODELS.build(cfg)
    hook = KnowledgeAdaptationHook(teacher_config=tiny_model_cfg(), teacher_checkpoint=teacher_ckpt,
                                   bottleneck_epochs=1, init_student_from_teacher=False)
    runner = FakeRunner(student)
    hook.before_train(runner)
    inputs, samples = fake_batch(student)
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3)
    edge = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.')
    for stage in (1, 2):
        runner.epoch = stage - 1
        hook.before_train_iter(runner, 0)
        assert hook.stage == stage
        before = snapshot(student)
        h = train_steps(student, hook, runner, inputs, samples, optim, 2)
        tops = {k.split('.')[0] for k in changed_keys(before, snapshot(student))}
        # labels and the teacher's detections (pseudo labels) both teach the exit
        assert 'edge_exit' in tops and {'exit_loss_cls', 'exit_kd_loss_cls'} <= set(h[0])
        assert tops & ({'compressor'} if stage == 1 else {'rpn_head', 'roi_head'})
        assert not {k for k in changed_keys(before, snapshot(student)) if k.startswith(edge)}
        if stage == 1:
            assert tops == {'compressor', 'edge_exit'}, tops
    hook.after_train(runner)

    cfg.train_exits_only = True
    hook = KnowledgeAdaptationHook(teacher_config=tiny_model_cfg(), teacher_checkpoint=teacher_ckpt,
                                   bottleneck_epochs=1, init_student_from_teacher=False)
    with pytest.raises(ConfigError, match='train_exits_only=False'):
        hook.before_train(FakeRunner(MODELS.build(cfg)))


@pytest.mark.parametrize('two_stage', [True, False])
def test_lossless_student_from_teacher_has_zero_response_loss(teacher_ckpt, tmp_path, two_stage):
    """Float32Neck + init from the teacher = the teacher: loss_kd_resp is 0 until heads differ."""
    base = tiny_model_cfg(TINY_FRCNN if two_stage else TINY_RETINA, norm_eval=True)
    ckpt = teacher_ckpt
    if not two_stage:
        torch.manual_seed(0)
        ckpt = save_model(MODELS.build(base), tmp_path / 'retina.pth')
    student = MODELS.build(student_cfg(base, dict(type='Float32Neck'), two_stage))
    hook = KnowledgeAdaptationHook(teacher_config=base, teacher_checkpoint=ckpt,
                                   bottleneck_epochs=0, temperature=2.0)
    runner = FakeRunner(student)
    hook.before_train(runner)
    assert hook.stage == 2 and hook.num_copied == len(hook.teacher.state_dict())
    student.train()
    hook.before_train_iter(runner, 0)
    inputs, samples = fake_batch(student)
    losses = student.loss(inputs, copy.deepcopy(samples))
    assert float(losses['loss_kd_resp']) < 1e-6
    head = student.roi_head.bbox_head.fc_cls if two_stage else student.bbox_head.retina_cls
    with torch.no_grad():
        head.bias.add_(torch.linspace(-1, 1, head.bias.numel()))
    losses = student.loss(inputs, copy.deepcopy(samples))
    assert float(losses['loss_kd_resp']) > 1e-3
    losses['loss_kd_resp'].backward()
    assert head.bias.grad is not None and head.bias.grad.abs().sum() > 0


def test_single_stage_student_both_stages(tmp_path):
    base = tiny_model_cfg(TINY_RETINA)
    torch.manual_seed(0)
    ckpt = save_model(MODELS.build(base), tmp_path / 'retina.pth')
    student = MODELS.build(student_cfg(base, BOTTLENECK, two_stage=False))
    hook = KnowledgeAdaptationHook(base, ckpt, bottleneck_epochs=1)
    runner = FakeRunner(student)
    hook.before_train(runner)
    inputs, samples = fake_batch(student)
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.1)
    before = snapshot(student)
    h1 = train_steps(student, hook, runner, inputs, samples, optim, 3)
    assert changed_keys(before, snapshot(student)) == {
        'compressor.' + k for k, _ in student.compressor.named_parameters()}
    assert set(h1[0]) == {'loss', 'loss_rate', 'loss_kd_feat', 'kd_stage'}
    assert h1[0]['loss_kd_feat'] > 0  # decoder output vs the teacher's layer1..3 outputs
    runner.epoch = 1
    before = snapshot(student)
    h2 = train_steps(student, hook, runner, inputs, samples, optim, 3)
    changed = changed_keys(before, snapshot(student))
    assert {k for k in changed if k.startswith('bbox_head.')} and not {
        k for k in changed if k.startswith(('backbone.layer1.', 'compressor.g_a.'))}
    assert {'loss_cls', 'loss_bbox', 'loss_kd_resp', 'rate'} <= set(h2[0])
    assert all(math.isfinite(h['loss_kd_resp']) and h['loss_kd_resp'] > 0 for h in h2)


# ---------------------------------------------------------------- real Runner, fresh + resume
class Recorder(Hook):
    """Runs after the KD hook (priority LOW): snapshots and per-iteration observations."""
    priority = 'LOW'

    def __init__(self):
        self.outputs, self.modes = [], []

    def before_train(self, runner):
        self.teacher = next(h for h in runner.hooks
                            if isinstance(h, KnowledgeAdaptationHook)).teacher
        self.teacher_start = snapshot(self.teacher)
        self.start = snapshot(runner.model)
        self.requires_grad = {k: p.requires_grad for k, p in runner.model.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.outputs.append({k: float(v) for k, v in outputs.items()})
        m = runner.model
        self.modes.append(dict(entropy=m.compressor.entropy_model.training,
                               edge_bn=m.backbone.layer1[0].bn1.training,
                               cloud_bn=m.backbone.layer3[0].bn1.training))

    def after_train(self, runner):
        self.end = snapshot(runner.model)
        self.teacher_end = snapshot(self.teacher)


def make_runner(tiny_coco, work_dir, teacher_ckpt, max_epochs, resume=False):
    cfg = Config.fromfile(KD_CFG)
    set_data_root(cfg, tiny_coco)
    cfg.model = student_cfg(tiny_model_cfg(), BOTTLENECK)
    cfg.teacher_config = tiny_model_cfg()  # top-level values, as --cfg-options would set them
    cfg.teacher_checkpoint = teacher_ckpt
    cfg.custom_hooks[0].bottleneck_epochs = 1
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=100)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = None
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.dataset.pipeline[2].scale = (64, 64)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.work_dir = str(work_dir)
    cfg.resume = resume
    cfg.log_level = 'INFO'
    runner = Runner.from_cfg(cfg)
    rec = Recorder()
    runner.register_hook(rec, priority='LOW')
    return runner, rec


def read_log(runner):
    return open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()


def test_real_runner_fresh_start_then_resume_into_stage2(tiny_coco, tmp_path, teacher_ckpt):
    work = tmp_path / 'work'
    # ---- run A: fresh, one bottleneck epoch (4 iterations)
    runner, rec = make_runner(tiny_coco, work, teacher_ckpt, max_epochs=1)
    runner.train()
    kd = next(h for h in runner.hooks if isinstance(h, KnowledgeAdaptationHook))
    teacher = kd.teacher
    log = read_log(runner)
    assert 'student initialised from the teacher: copied' in log and 'stage 1/2' in log
    t_state = teacher.state_dict()
    shared = [k for k in rec.start if k in t_state]
    assert len(shared) == kd.num_copied > 50
    assert all(torch.equal(rec.start[k], t_state[k]) for k in shared)
    assert {k for k, g in rec.requires_grad.items() if g} == {
        'compressor.' + k for k, _ in runner.model.compressor.named_parameters()}
    changed = changed_keys(rec.start, rec.end)
    assert changed and all(k.startswith('compressor.') for k in changed)
    assert all(o['kd_stage'] == 1 and math.isfinite(o['loss_kd_feat']) for o in rec.outputs)
    assert all(not m['edge_bn'] and not m['cloud_bn'] and m['entropy'] for m in rec.modes)
    # the teacher: frozen, in eval mode, outside the student, its optimizer and checkpoint
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not changed_keys(rec.teacher_start, rec.teacher_end)  # BN statistics included
    assert runner.model.distiller is None  # detached after training
    opt_ids = {id(p) for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']}
    assert not opt_ids & {id(p) for p in teacher.parameters()}
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu')
    assert set(ckpt['state_dict']) == set(rec.start)

    # ---- run B: resume (epoch 1 -> 2) with ANOTHER teacher: resumed weights must survive
    torch.manual_seed(5)
    teacher2 = save_model(MODELS.build(tiny_model_cfg()), tmp_path / 't2.pth')
    runner, rec = make_runner(tiny_coco, work, teacher2, max_epochs=2, resume=True)
    runner.train()
    log = read_log(runner)
    assert 'not initialised from the teacher' in log and 'stage 2/2' in log
    assert 'copied' not in log
    # the stage-1 losses (restored with the message hub) no longer show up in the log
    stage2_lines = [ln for ln in log.splitlines() if 'Epoch(train) [2]' in ln]
    assert stage2_lines and not any('loss_kd_feat' in ln or 'loss_rate' in ln
                                    for ln in stage2_lines)
    assert all('loss_kd_resp' in ln and 'rate' in ln for ln in stage2_lines)
    for k, v in ckpt['state_dict'].items():
        if not k.endswith(TABLES):
            assert torch.equal(rec.start[k], v), k
    assert not torch.equal(rec.start['backbone.layer2.0.conv1.weight'],
                           torch.load(teacher2)['state_dict']['backbone.layer2.0.conv1.weight'])
    changed = changed_keys(rec.start, rec.end)
    edge = ('backbone.conv1.', 'backbone.bn1.', 'backbone.layer1.', 'compressor.g_a.',
            'compressor.entropy_model.')
    assert not [k for k in changed if k.startswith(edge)]
    trainable = {k for k, g in rec.requires_grad.items() if g}
    assert trainable == {k for k in rec.requires_grad if not k.startswith(edge)}
    assert trainable <= changed  # every cloud parameter moved; cloud BN statistics too
    assert 'backbone.layer3.0.bn1.running_mean' in changed
    assert all(o['kd_stage'] == 2 and math.isfinite(o['loss_kd_resp']) and 'loss_rate' not in o
               and o['rate'] > 0 for o in rec.outputs)
    assert all(not m['edge_bn'] and m['cloud_bn'] and not m['entropy'] for m in rec.modes)
    assert not changed_keys(rec.teacher_start, rec.teacher_end)


def test_iteration_schedule_and_default_length(teacher_ckpt):
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), teacher_ckpt, bottleneck_iters=3)
    runner = FakeRunner(student)
    hook.before_train(runner)
    stages = []
    for it in range(5):
        runner.iter = it
        hook.before_train_iter(runner, it)
        stages.append(hook.stage)
    assert stages == [1, 1, 1, 2, 2]
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), teacher_ckpt)  # default: half of training
    runner = FakeRunner(student, epoch=2, max_epochs=4)
    runner._has_loaded = True  # as after a resume: the student's weights are kept
    before = snapshot(student)
    hook.before_train(runner)
    assert hook.stage == 2 and hook.num_copied == 0
    assert not {k for k in changed_keys(before, snapshot(student)) if not k.endswith(TABLES)}


# ---------------------------------------------------------------- errors and configs
def test_missing_teacher_files_say_how_to_fix(teacher_ckpt, tmp_path):
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    teacher_cfg = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
    hook = KnowledgeAdaptationHook(teacher_config=teacher_cfg,
                                   teacher_checkpoint=str(tmp_path / 'nope.pth'),
                                   bottleneck_epochs=1)
    with pytest.raises(FileNotFoundError) as err:
        hook.before_train(FakeRunner(student))
    msg = str(err.value)
    assert 'nope.pth' in msg and f'Train the teacher first (an ordinary MMDetection training ' \
        f'of {teacher_cfg}' in msg and 'teacher_checkpoint=PATH' in msg
    assert 'demo' not in msg and 'work_dirs' not in msg  # a library error names no repo paths
    hook = KnowledgeAdaptationHook(teacher_config='configs/no_such_teacher.py',
                                   teacher_checkpoint=teacher_ckpt, bottleneck_epochs=1)
    with pytest.raises(FileNotFoundError, match="'configs/no_such_teacher.py' does not exist"):
        hook.before_train(FakeRunner(student))
    assert student.distiller is None


def test_checkpoint_that_does_not_fit_the_teacher_config(tmp_path):
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    wide = save_model(MODELS.build(tiny_model_cfg(width=16)), tmp_path / 'wide.pth')
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), wide, bottleneck_epochs=1)
    with pytest.raises(ConfigError, match=r'does not fit .*shape mismatch: backbone\.conv1'):
        hook.before_train(FakeRunner(student))
    split_ckpt = save_model(student, tmp_path / 'student.pth')
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), split_ckpt, bottleneck_epochs=1)
    with pytest.raises(ConfigError, match=r'unexpected: compressor\..*split \(student\)'):
        hook.before_train(FakeRunner(student))
    retina = save_model(MODELS.build(tiny_model_cfg(TINY_RETINA)), tmp_path / 'retina.pth')
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), retina, bottleneck_epochs=1)
    with pytest.raises(ConfigError, match=r'missing: .*rpn_head'):
        hook.before_train(FakeRunner(student))


def test_non_split_student_and_codec_without_parameters(teacher_ckpt):
    plain = MODELS.build(tiny_model_cfg())
    hook = KnowledgeAdaptationHook(tiny_model_cfg(), teacher_ckpt, bottleneck_epochs=1)
    with pytest.raises(ConfigError, match='split edge/cloud student.*FasterRCNN'):
        hook.before_train(FakeRunner(plain))
    f32 = MODELS.build(student_cfg(tiny_model_cfg(), dict(type='Float32Neck')))
    with pytest.raises(ConfigError, match='no trainable parameters.*bottleneck_epochs=0'):
        hook.before_train(FakeRunner(f32))
    with pytest.raises(ConfigError, match='not both'):
        KnowledgeAdaptationHook(bottleneck_epochs=1, bottleneck_iters=10)


def test_configs_declare_the_hook_and_teacher_paths(teacher_ckpt):
    kd = Config.fromfile(KD_CFG)
    assert kd.custom_hooks[0].type == 'KnowledgeAdaptationHook'
    # {{fileDirname}}: the teacher next to the KD config, found from any working directory
    assert kd.teacher_config == osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')
    assert kd.teacher_checkpoint == 'work_dirs/demo/baseline/epoch_12.pth'
    assert kd.custom_hooks[0].bottleneck_epochs < kd.train_cfg.max_epochs
    assert isinstance(HOOKS.build(kd.custom_hooks[0]), KnowledgeAdaptationHook)
    coco = Config.fromfile(COCO_CFG)
    assert coco.custom_hooks[0].type == 'KnowledgeAdaptationHook'
    assert coco.teacher_checkpoint.endswith('faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth')
    path = resolve_path(coco.teacher_config)
    assert Config.fromfile(path).model.type == 'FasterRCNN'
    # the COCO checkpoint is only needed once training starts; without it, a clear message
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    runner = FakeRunner(student, cfg=dict(teacher_config=coco.teacher_config,
                                          teacher_checkpoint='checkpoints/none.pth'))
    with pytest.raises(FileNotFoundError, match='model zoo'):
        HOOKS.build(coco.custom_hooks[0]).before_train(runner)


def test_response_kd_is_the_summed_kl_that_is_mmdets_mean_times_the_classes():
    """The documented factor: our softmax KD sums the KL over classes, mmdet's LD loss averages."""
    from mmdet.models.losses import KnowledgeDistillationKLDivLoss
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    T = 2.0
    ours = softmax_kd(student, teacher, T)
    # the textbook definition, written out
    pt = torch.softmax(teacher / T, -1)
    kl = (pt * (torch.log(pt) - torch.log_softmax(student / T, -1))).sum(-1).mean() * T**2
    torch.testing.assert_close(ours, kl)
    mmdet_ld = KnowledgeDistillationKLDivLoss(loss_weight=1.0, T=T)(student, teacher)
    torch.testing.assert_close(ours, 7 * mmdet_ld)
    assert float(softmax_kd(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)


def test_background_weight_of_the_feature_loss_counts_errors_where_objects_are():
    """b = 1: plain MSE; b = 0: an error outside every GT box costs nothing, inside it does."""
    _, samples = fake_batch(MODELS.build(tiny_model_cfg()), n=2)  # 64 px, 2 GT boxes each
    g = torch.Generator().manual_seed(0)
    t_outs = (torch.randn(2, 8, 16, 16, generator=g), torch.randn(2, 16, 8, 8, generator=g))

    class FakeBackbone:
        out_indices = (0, 1)

        def __call__(self, x):
            return t_outs

    model = types.SimpleNamespace(splitter=types.SimpleNamespace(split_after=1,
                                                                 out_indices=(0, 1)))
    inputs = torch.zeros(2, 3, 64, 64)

    def loss(bg, student):
        hook = KnowledgeAdaptationHook(feature_loss_background_weight=bg)
        hook.distiller.teacher = types.SimpleNamespace(backbone=FakeBackbone())
        return float(hook.distiller.feature_loss(model, inputs, samples, student))

    w = FeatureKDLoss(background_weight=0.25).foreground_weights(samples, (2, 8, 16, 16),
                                                                 (64, 64))
    # box [4, 6, 30, 34] at stride 4 covers columns 1..7 and rows 1..8
    assert w.shape == (2, 1, 16, 16) and float(w[0, 0, 1, 1]) == 1.0 == float(w[0, 0, 8, 7])
    assert float(w[0, 0, 0, 0]) == 0.25 and float(w[0, 0, 9, 0]) == 0.25

    bg_only = tuple(t + 3.0 * (w.expand_as(t) < 1) for t in t_outs[:1]) + (t_outs[1], )
    assert loss(1.0, bg_only) == pytest.approx(
        float(torch.nn.functional.mse_loss(bg_only[0], t_outs[0])))
    assert loss(0.0, bg_only) == pytest.approx(0.0, abs=1e-12)
    fg_only = tuple(t + 3.0 * (w.expand_as(t) == 1) for t in t_outs[:1]) + (t_outs[1], )
    assert loss(0.0, fg_only) == pytest.approx(9.0)  # every counted cell is off by 3
    with pytest.raises(ConfigError, match='feature_loss_background_weight'):
        KnowledgeAdaptationHook(feature_loss_background_weight=1.5)


def test_rtmdet_student_both_stages(tmp_path):
    """The CSPNeXt split (out_indices count the stem as layer 0) distils every cloud stage
    output, and RTMDet's sigmoid dense scores give the response loss."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    base = ConfigDict(copy.deepcopy(conftest.TINY_RTMDET))
    torch.manual_seed(0)
    ckpt = save_model(MODELS.build(base), tmp_path / 'rtmdet.pth')
    student = MODELS.build(dict(copy.deepcopy(base), type='EdgeCloudRTMDet', split_after=1,
                                compressor=BOTTLENECK, measure_flops=False))
    hook = KnowledgeAdaptationHook(base, ckpt, bottleneck_epochs=1)
    runner = FakeRunner(student)
    hook.before_train(runner)
    assert hook.num_copied == len(hook.teacher.state_dict())
    inputs, samples = fake_batch(student)
    optim = torch.optim.AdamW(student.parameters(), lr=1e-3)
    h1 = train_steps(student, hook, runner, inputs, samples, optim, 2)
    assert h1[0]['loss_kd_feat'] > 0
    runner.epoch = 1
    before = snapshot(student)
    h2 = train_steps(student, hook, runner, inputs, samples, optim, 2)
    changed = changed_keys(before, snapshot(student))
    assert {k for k in changed if k.startswith('bbox_head.')}
    assert not {k for k in changed if k.startswith(('backbone.stem.', 'backbone.stage1.',
                                                    'compressor.g_a.'))}
    assert all(math.isfinite(h['loss_kd_resp']) and h['loss_kd_resp'] > 0 for h in h2)


def test_detr_student_refuses_response_distillation():
    from mmdet.models.detectors.base_detr import DetectionTransformer
    cls = type('AnyDETR', (DetectionTransformer, ), {})
    cls.__abstractmethods__ = frozenset()  # only the type matters to the check
    detr = cls.__new__(cls)
    torch.nn.Module.__init__(detr)
    distiller = DetectionDistiller()
    distiller.teacher = types.SimpleNamespace(bbox_head=object(), backbone=types.SimpleNamespace(
        out_indices=(1, 2, 3)), data_preprocessor=None)
    with pytest.raises(ConfigError, match='set response_loss_weight=0'):
        distiller.check_compatible(detr, response=True)


def test_objectness_gated_head_refuses_response_distillation():
    """YOLOX trains class logits only where objects are: dense response KD would copy noise."""
    student = types.SimpleNamespace(bbox_head=types.SimpleNamespace(loss_obj=object()),
                                    data_preprocessor=None)
    teacher = types.SimpleNamespace(bbox_head=object(), backbone=types.SimpleNamespace(
        out_indices=(2, 3, 4)), data_preprocessor=None)
    distiller = DetectionDistiller()
    distiller.teacher = teacher
    with pytest.raises(ConfigError, match='objectness.*set response_loss_weight=0'):
        distiller.check_compatible(student, response=True)
    distiller.check_compatible(student, response=False)
    assert not KnowledgeAdaptationHook(response_loss_weight=0.0)._response_on()


# ---------------------------------------------------------------- ecc_mmdet.distillation pieces
def test_teacher_with_other_classes_is_refused_naming_both_counts(tmp_path):
    three = tiny_model_cfg()
    three.roi_head.bbox_head.num_classes = 3
    ckpt = save_model(MODELS.build(three), tmp_path / 'three.pth')
    student = MODELS.build(student_cfg(tiny_model_cfg()))  # 6 classes
    distiller = DetectionDistiller(three, ckpt).build()
    with pytest.raises(ConfigError, match=r'teacher FasterRCNN detects 3 classes but the '
                       r'student EdgeCloudTwoStageDetector detects 6.*same dataset metainfo'):
        distiller.check_classes(student)
    hook = KnowledgeAdaptationHook(three, ckpt, bottleneck_epochs=1)
    with pytest.raises(ConfigError, match='detects 3 classes .* detects 6'):
        hook.before_train(FakeRunner(student))
    assert student.distiller is None
    # the last cascade stage decides; a student's edge exit must agree too
    ns = types.SimpleNamespace
    distiller.teacher = ns(roi_head=ns(bbox_head=[ns(num_classes=9), ns(num_classes=6)]))
    distiller.check_classes(ns(bbox_head=ns(num_classes=6), edge_exit=None))
    with pytest.raises(ConfigError, match="6 classes but the student's edge_exit detects 2"):
        distiller.check_classes(ns(bbox_head=ns(num_classes=6), edge_exit=ns(num_classes=2)))


def test_distiller_and_losses_build_from_config(teacher_ckpt):
    distiller = MODELS.build(dict(
        type='DetectionDistiller', teacher_config=tiny_model_cfg(), teacher_checkpoint=teacher_ckpt,
        feature_loss=dict(type='FeatureKDLoss', background_weight=0.5, loss_weight=2.0),
        response_loss=dict(type='ResponseKDLoss', temperature=2.0), response_num_rois=16))
    assert isinstance(distiller, DetectionDistiller) and not distiller.built
    assert isinstance(distiller.feature_kd, FeatureKDLoss)
    assert distiller.feature_kd.background_weight == 0.5 and distiller.feature_kd.loss_weight == 2
    assert distiller.response_kd.temperature == 2.0 and distiller.response_num_rois == 16
    assert copy.deepcopy(distiller) is distiller  # never copies its teacher
    assert isinstance(MODELS.build(dict(type='FeatureKDLoss')), FeatureKDLoss)
    resp = MODELS.build(dict(type='ResponseKDLoss'))
    assert isinstance(resp, ResponseKDLoss)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    assert float(ResponseKDLoss()(x, x, use_sigmoid=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(ResponseKDLoss()(x, x.flip(-1), use_sigmoid=False)) > 0
    assert float(ResponseKDLoss()(x, x.flip(-1), use_sigmoid=True)) > 0
    assert float(ResponseKDLoss(loss_weight=0.0)(x, x.flip(-1), use_sigmoid=False)) == 0
    for bad in (dict(type='ResponseKDLoss', temperature=0), dict(type='FeatureKDLoss',
                                                                background_weight=1.5)):
        with pytest.raises(ConfigError):
            MODELS.build(bad)

    # the teacher's detections as pseudo labels, leaving the caller's samples untouched
    distiller.build()
    teacher = distiller.teacher
    assert distiller.built and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    inputs, samples = conftest.fake_batch(teacher, size=64, with_gt=True)
    preds = distiller.predict(inputs, samples)
    assert not teacher.training
    assert len(preds) == 2 and all('pred_instances' in p for p in preds)
    assert all('pred_instances' not in s and 'gt_instances' in s for s in samples)
    assert preds[0].metainfo['img_id'] == 0


def test_hook_takes_a_distiller_config_or_the_flat_arguments_not_both(teacher_ckpt):
    cfg = dict(type='DetectionDistiller', teacher_config=tiny_model_cfg(),
               teacher_checkpoint=teacher_ckpt,
               response_loss=dict(type='ResponseKDLoss', loss_weight=0.0))
    with pytest.raises(ConfigError, match='not both: move teacher_config'):
        KnowledgeAdaptationHook(teacher_config=tiny_model_cfg(), distiller=cfg)
    with pytest.raises(ConfigError, match='not both: move temperature'):
        KnowledgeAdaptationHook(temperature=2.0, distiller=cfg)
    hook = HOOKS.build(dict(type='KnowledgeAdaptationHook', bottleneck_epochs=0, distiller=cfg))
    assert isinstance(hook.distiller, DetectionDistiller) and not hook._response_on()
    student = MODELS.build(student_cfg(tiny_model_cfg()))
    hook.before_train(FakeRunner(student))
    assert hook.teacher is hook.distiller.teacher and hook.stage == 2
    student.train()
    hook.before_train_iter(FakeRunner(student), 0)
    inputs, samples = fake_batch(student)
    losses = student.loss(inputs, copy.deepcopy(samples))
    assert 'loss_kd_resp' not in losses and 'loss_cls' in losses
