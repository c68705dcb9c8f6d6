"""mmengine's EMAHook, as mmdet's RTMDet and YOLOX configs set it (``ExpMomentumEMA``,
``update_buffers=True``), on split detectors with entropy-coded necks: training, validation and
checkpoints run through a real Runner, and the saved checkpoint -- the averaged weights with the
coding tables of those weights (EMACodingTablesHook) -- deploys: a cloud build of it decodes
the averaged model's payloads into its detections."""
import copy
import os.path as osp
import types

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.hooks import EMAHook, Hook
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint

import ecc_mmdet  # noqa: F401
from ecc_mmdet.engine.hooks import EMACodingTablesHook
from ecc_mmdet.entropy_models import FactorizedEntropyModel
from ecc_mmdet.utils import ConfigError, set_data_root
from mmdet.registry import MODELS

import conftest
from conftest import REPO, TINY_RTMDET

CFG = osp.join(REPO, 'configs', 'rtmdet_tiny_synthetic.py')
# mmdet's rtmdet_tiny_8xb32-300e_coco.py setting; gamma=2 (mmdet: 2000) so that four steps
# already average (its momentum starts near 1, i.e. the copy follows the model at first)
EMA = dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, gamma=2,
           update_buffers=True, priority=49)
NECKS = {
    'factorized': dict(type='EntropyBottleneckNeck', latent_channels=8, beta=0.05),
    'hyperprior': dict(type='HyperpriorBottleneckNeck', latent_channels=8, hyper_channels=8,
                       hyper_downsample=2, beta=0.05),
}


def split_rtmdet(compressor):
    cfg = conftest.split_cfg(ConfigDict(copy.deepcopy(TINY_RTMDET)), 1, compressor,
                             two_stage=False, measure_flops=False)
    cfg.type = 'EdgeCloudRTMDet'
    cfg.test_cfg.score_thr = 0.0  # a few steps from scratch score low: keep every box
    return cfg


def tables_models(model):
    return [m for m in model.modules() if isinstance(m, FactorizedEntropyModel)]


class ValTables(Hook):
    """Records, during validation (after EMAHook swapped the averaged weights in), whether the
    model's tables are those of the weights it holds (on copies: no cached fingerprint)."""
    priority = 'LOW'

    def __init__(self):
        self.ready = []

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.ready += [copy.deepcopy(m).tables_ready() for m in tables_models(runner.model)]


def make_runner(tiny_coco, work_dir, compressor):
    """2 epochs of 2 iterations, validation (real payloads) and a checkpoint after each."""
    cfg = Config.fromfile(CFG)
    set_data_root(cfg, tiny_coco)
    cfg.model = split_rtmdet(compressor)
    cfg.custom_hooks = [EMA, dict(type='EMACodingTablesHook')]
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    runner.register_hook(ValTables(), priority='LOW')
    return cfg, runner


@pytest.mark.parametrize('neck', sorted(NECKS))
def test_ema_trains_validates_saves_and_deploys(tiny_coco, tmp_path, neck):
    torch.manual_seed(0)
    cfg, runner = make_runner(tiny_coco, tmp_path, NECKS[neck])
    runner.train()  # validates after each epoch with the averaged weights swapped in
    val_tables = next(h for h in runner.hooks if isinstance(h, ValTables))
    assert val_tables.ready and all(val_tables.ready)
    averaged = next(h for h in runner.hooks if isinstance(h, EMAHook)).ema_model.module
    path = str(tmp_path / 'epoch_2.pth')
    saved = torch.load(path, map_location='cpu')['state_dict']
    weights = {k: v for k, v in averaged.state_dict().items() if k in saved}
    assert all(torch.equal(saved[k], v.cpu()) for k, v in weights.items())
    trained = runner.model.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in weights.items()
               if k.startswith('compressor.'))  # the average is not the trained model

    # the checkpoint's tables are those of its (averaged) weights: loaded, not rebuilt
    deployed = MODELS.build(cfg.model)  # training mode: eval() would rebuild stale tables
    load_checkpoint(deployed, path, map_location='cpu', logger='silent')
    assert tables_models(deployed) and all(m.tables_ready() for m in tables_models(deployed))
    cloud = deployed.eval().build_cloud()

    averaged.eval()  # the averaged model in process, as the edge runs it
    inputs, samples = conftest.fake_batch(averaged, n=2, size=64, seed=3)
    payloads = averaged.encode(inputs, samples)
    want = averaged.predict(inputs, copy.deepcopy(samples))
    got = cloud.decode_and_predict(payloads)
    assert sum(len(r.pred_instances) for r in want) > 0
    for a, b in zip(want, got):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(a.pred_instances[key], b.pred_instances[key]), key


def test_tables_hook_must_run_after_ema_hook():
    ema, tables = EMAHook(), EMACodingTablesHook()
    tables.before_run(types.SimpleNamespace(hooks=[ema, tables]))  # the default priorities
    with pytest.raises(ConfigError, match='after EMAHook'):
        tables.before_run(types.SimpleNamespace(hooks=[tables, ema]))


def test_averaged_copy_drops_loaded_tables():
    """After a checkpoint load the averaged copy holds no tables, so that mmengine's copies of
    the model into it before the average starts (``begin_iter``) never meet tables of another
    size."""
    init_default_scope('mmdet')
    model = MODELS.build(split_rtmdet(NECKS['factorized'])).eval()  # tables built
    checkpoint = {'state_dict': model.state_dict(), 'meta': {}}
    ema = EMAHook(**{k: v for k, v in EMA.items() if k not in ('type', 'priority')},
                  begin_iter=10)
    runner = types.SimpleNamespace(model=model.train(), hooks=[ema, EMACodingTablesHook()],
                                   iter=0, epoch=0, _resume=False)
    for hook in runner.hooks:
        hook.before_run(runner)
    for hook in runner.hooks:
        hook.after_load_checkpoint(runner, checkpoint)
    assert not any(m.tables_ready() for m in tables_models(ema.ema_model.module))
    em = model.compressor.entropy_model
    width = em._pmf_table.shape[1]
    with torch.no_grad():
        em.matrices[0].sub_(1.0)  # a flatter density: wider tails, longer tables
    em.update()
    assert em._pmf_table.shape[1] > width
    ema.after_train_iter(runner, 0)  # not started: copies the model's state into the copy
    assert torch.equal(ema.ema_model.module.compressor.entropy_model.matrices[0], em.matrices[0])


@pytest.mark.parametrize('name', ['ecc_rtmdet_tiny_coco.py', 'ecc_yolox_s_coco.py'])
def test_split_coco_configs_keep_mmdets_ema(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    base = get_config(cfg.teacher_config)  # mmdet's own config of the family
    hooks = [h['type'] for h in cfg.custom_hooks]
    ema = cfg.custom_hooks[hooks.index('EMAHook')]
    assert ema == next(h for h in base.custom_hooks if h['type'] == 'EMAHook')
    assert ema['ema_type'] == 'ExpMomentumEMA' and ema['update_buffers']
    assert 'priority' not in cfg.custom_hooks[hooks.index('EMACodingTablesHook')]  # runs after


def test_config_check_asks_for_the_tables_hook_next_to_ema():
    from mmengine.config import Config

    from ecc_mmdet.engine.hooks.ema_coding_tables_hook import check_ema_tables
    cfg = Config(dict(model=dict(compressor=dict(type='HyperpriorBottleneckNeck')),
                      custom_hooks=[dict(type='EMAHook')]))
    with pytest.raises(ConfigError, match="add dict\\(type='EMACodingTablesHook'\\)"):
        check_ema_tables(cfg)
    cfg.custom_hooks.append(dict(type='EMACodingTablesHook'))
    check_ema_tables(cfg)
    check_ema_tables(Config(dict(model=dict(compressor=dict(type='QuantizeNeck')),
                                 custom_hooks=[dict(type='EMAHook')])))  # no tables to follow
