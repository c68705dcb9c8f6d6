"""Wrong files and wrong config values are refused before use, in one clear line.

A checkpoint of another model (the unsplit teacher's for a split config, a split checkpoint for
the unsplit detector, a reshaped tensor), a truncated or non-checkpoint file: refused by the
shared check (variations, in-process) and by tools/test.py, tools/train.py --resume,
tools/serve_cloud.py and tools/edge_client.py (one subprocess each). Training from a teacher
(load_from) may lack only the split parts. A misspelled config type or key is one error line,
with the traceback only under --debug.
"""
import copy
import logging
import os.path as osp
import re
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import save_checkpoint

from conftest import TINY_FRCNN, run_tool, split_cfg, tiny_model_cfg

BOTTLENECK = dict(type='EntropyBottleneckNeck', latent_channels=8)


def _save(path, model_or_state, meta=None):
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    save_checkpoint({'state_dict': state, 'meta': meta or {}}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A tiny split detector's config and checkpoints: its own, its teacher's (the unsplit
    detector, with the meta a Runner saves), a reshaped one, a truncated and a text file."""
    from ecc_mmdet.apis import build_detector
    d = tmp_path_factory.mktemp('wrong_files')
    unsplit_cfg = tiny_model_cfg(TINY_FRCNN)
    split = split_cfg(unsplit_cfg, 1, compressor=BOTTLENECK, measure_flops=False)
    torch.manual_seed(0)
    model = build_detector(split)
    teacher_meta = dict(experiment_name='faster_rcnn_tiny_20250101_120000',
                        cfg=Config(dict(model=unsplit_cfg)).pretty_text)
    state = model.state_dict()
    name = 'roi_head.bbox_head.fc_cls.weight'
    files = dict(
        own=_save(d / 'own.pth', model, dict(cfg=Config(dict(model=split)).pretty_text)),
        teacher=_save(d / 'teacher.pth', build_detector(unsplit_cfg), teacher_meta),
        reshaped=_save(d / 'reshaped.pth', dict(state, **{name: state[name][:-1]})),
        no_bn_counts=_save(d / 'no_bn.pth', {k: v for k, v in state.items()
                                             if not k.endswith('num_batches_tracked')}))
    files['truncated'] = str(d / 'truncated.pth')
    data = open(files['own'], 'rb').read()
    open(files['truncated'], 'wb').write(data[:len(data) // 2])
    files['text'] = str(d / 'text.pth')
    open(files['text'], 'w').write('not a checkpoint\n')
    return dict(split=split, unsplit=unsplit_cfg, files=files, model=model)


def _build(cfg, ckpt, **kw):
    from ecc_mmdet.apis import build_detector
    return build_detector(cfg, ckpt, **kw)


def test_a_checkpoint_of_another_model_is_refused_with_keys_and_origin(tiny):
    from ecc_mmdet.utils.checkpoint_check import CheckpointError
    f = tiny['files']
    with pytest.raises(CheckpointError) as e:
        _build(tiny['split'], f['teacher'])
    msg = str(e.value)
    assert re.search(r'missing \d+ keys under compressor\.\* \(e\.g\. compressor\.', msg)
    assert 'config faster_rcnn_tiny with model FasterRCNN' in msg  # from the saved meta
    assert '--allow-partial-checkpoint' in msg and '\n' not in msg
    with pytest.raises(CheckpointError, match=r'unexpected \d+ keys under compressor\.\*.*'
                       r'EdgeCloudTwoStageDetector \(split_after=1, EntropyBottleneckNeck\)'):
        _build(tiny['unsplit'], f['own'])
    with pytest.raises(CheckpointError, match=r'reshaped 1 key: roi_head\.bbox_head\.fc_cls'
                       r'\.weight \(.* is \(6, \d+\) in the checkpoint, \(7, \d+\) in the model'):
        _build(tiny['split'], f['reshaped'])


def test_partial_loading_is_explicit(tiny, caplog):
    """'split' lets only the split parts be absent (a student from its teacher's weights);
    True loads whatever fits; BN's num_batches_tracked may always be absent."""
    from ecc_mmdet.utils.checkpoint_check import CheckpointError
    f = tiny['files']
    model = _build(tiny['split'], f['teacher'], partial='split')
    teacher = torch.load(f['teacher'], map_location='cpu')['state_dict']
    assert torch.equal(model.backbone.conv1.weight, teacher['backbone.conv1.weight'])
    with pytest.raises(CheckpointError, match='reshaped'):
        _build(tiny['split'], f['reshaped'], partial='split')  # not a split part
    model = _build(tiny['split'], f['reshaped'], partial=True)
    own = tiny['model'].state_dict()
    assert torch.equal(model.backbone.conv1.weight, own['backbone.conv1.weight'])
    _build(tiny['split'], f['no_bn_counts'])


def test_unreadable_files_get_the_same_message(tiny, tmp_path):
    from ecc_mmdet.serving.runtime import CloudRuntime
    from ecc_mmdet.utils.checkpoint_check import CheckpointError, read_checkpoint
    f = tiny['files']
    for path in (f['truncated'], f['text']):
        with pytest.raises(CheckpointError, match='is not a readable checkpoint .*: the file '
                           'is truncated, corrupted or not a PyTorch checkpoint'):
            read_checkpoint(path)
        cfg = Config(dict(model=tiny['split']))
        with pytest.raises(CheckpointError, match='not a readable checkpoint'):
            CloudRuntime.from_files(cfg, path)
    with pytest.raises(CheckpointError, match='Checkpoint not found'):
        read_checkpoint(str(tmp_path / 'missing.pth'))


def test_the_saved_config_is_read_never_run(tiny):
    from ecc_mmdet.utils.checkpoint_check import checkpoint_origin
    text = "model = dict(type='RetinaNet', backbone=dict(type='ResNet'))\nraise SystemExit(3)\n"
    assert checkpoint_origin({'meta': {'cfg': text}}) == \
        'it seems to come from a config with model RetinaNet'
    assert checkpoint_origin({'meta': {'cfg': 'import os;'}}) == ''
    assert checkpoint_origin({}) == ''


def test_runner_check_lets_training_start_a_student_from_its_teacher(tiny, tmp_path, caplog):
    """The Runner path (tools/train.py, tools/test.py): load_from a teacher is accepted for
    training (one INFO line), refused for resuming and testing."""
    from ecc_tools.cli import check_runner_checkpoint
    from ecc_mmdet.utils.checkpoint_check import CheckpointError
    logger = logging.getLogger('wrong_files_test')

    def runner(**cfg):
        return types.SimpleNamespace(cfg=Config(cfg), model=tiny['model'], logger=logger,
                                     work_dir=str(tmp_path))
    teacher = tiny['files']['teacher']
    with caplog.at_level(logging.INFO, logger='wrong_files_test'):
        check_runner_checkpoint(runner(load_from=teacher), training=True)
    assert 'missing' in caplog.text and 'start from their initialisation' in caplog.text
    for kwargs in (dict(training=True, r=dict(load_from=teacher, resume=True)),
                   dict(training=False, r=dict(load_from=teacher))):
        with pytest.raises(CheckpointError, match='does not fit'):
            check_runner_checkpoint(runner(**kwargs['r']), kwargs['training'])
    check_runner_checkpoint(runner(load_from=teacher, resume=True), True, partial=True)
    with pytest.raises(CheckpointError, match="load_from='nowhere.pth': checkpoint not found"):
        check_runner_checkpoint(runner(load_from='nowhere.pth'), training=True)
    check_runner_checkpoint(runner(load_from=None, resume=True), True)  # nothing to resume


def _refused(proc, *fragments):
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith('error:')]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope='module')
def teacher_of_served(served_model, tmp_path_factory):
    """The served split model's unsplit detector, as a teacher checkpoint."""
    from ecc_mmdet.apis import build_detector, load_config, unsplit_model_cfg
    cfg = load_config(served_model['config'])
    d = tmp_path_factory.mktemp('teacher')
    return _save(d / 'teacher.pth', build_detector(unsplit_model_cfg(cfg.model)),
                 dict(experiment_name='faster_rcnn_r18_fpn_synthetic_20250101_000000'))


MISSING, ORIGIN = 'missing 24 keys under compressor.*', 'config faster_rcnn_r18_fpn_synthetic'


def test_test_and_train_resume_refuse_wrong_checkpoints(served_model, teacher_of_served,
                                                       tmp_path):
    config, truncated = served_model['config'], tmp_path / 'truncated.pth'
    truncated.write_bytes(open(served_model['checkpoint'], 'rb').read()[:5000])
    _refused(run_tool('test', config, teacher_of_served, '--work-dir', tmp_path / 't',
                      check=False), MISSING, ORIGIN)
    _refused(run_tool('train', config, '--resume', truncated, '--work-dir', tmp_path / 'r',
                      check=False), 'not a readable checkpoint')


def test_server_and_client_refuse_the_teacher_checkpoint(served_model, teacher_of_served):
    config = served_model['config']
    _refused(run_tool('serve_cloud', config, teacher_of_served, '--port', '0',
                      '--insecure-no-auth', check=False, timeout=120), MISSING, ORIGIN)
    images = osp.join(served_model['data_root'], 'val')
    _refused(run_tool('edge_client', config, teacher_of_served, '--server',
                      'http://127.0.0.1:9', '--source', images, '--insecure-no-auth',
                      check=False, timeout=120), MISSING, ORIGIN)


def test_config_errors_are_one_line(served_model, tmp_path):
    from ecc_mmdet.apis import build_detector, load_config
    from ecc_mmdet.utils import ConfigError
    proc = run_tool('train', served_model['config'], '--work-dir', tmp_path, '--cfg-options',
                    'model.compressor.type=EntropyBotleneckNeck', check=False)
    _refused(proc, "model.compressor.type='EntropyBotleneckNeck'",
             "did you mean 'EntropyBottleneckNeck'")
    cfg = load_config(served_model['config'])
    typo = copy.deepcopy(cfg.model)
    typo.compressor.latent_chanels = 8
    with pytest.raises(ConfigError, match=r"^model\.compressor\.latent_chanels=8: "
                       r"EntropyBottleneckNeck takes no argument 'latent_chanels'; did you mean "
                       r"'latent_channels'"):
        build_detector(typo)
    cfg.model.split_after = 99
    with pytest.raises(ConfigError, match=r'split_after must be an int in \[0, 4\].*got 99'):
        build_detector(cfg.model)


def test_main_guard_prints_one_line_and_the_traceback_only_with_debug(capsys):
    from ecc_tools.cli import main_guard
    from ecc_mmdet.utils import ConfigError

    @main_guard
    def main(argv=None):
        assert '--debug' not in argv
        if argv[0] == 'config':
            raise ConfigError('model.x=1: wrong\n  (fix: use 2)')
        if argv[0] == 'registry':
            raise KeyError('Foo is not in the mmdet::model registry. Please check ...')
        raise RuntimeError('a bug, not a user error')

    assert main(['config']) == 2
    err = capsys.readouterr().err
    assert err == 'error: model.x=1: wrong (fix: use 2)\n'
    assert main(['config', '--debug']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' in err and err.endswith('error: model.x=1: wrong (fix: use 2)\n')
    assert main(['registry']) == 2
    assert capsys.readouterr().err.startswith("error: type='Foo': no model type")
    with pytest.raises(RuntimeError):
        main(['bug'])
