"""What the tools share: common arguments, config, launch, and one error line per user error.

``tools/train.py`` and ``tools/test.py`` share the arguments, the Runner and the checkpoint check;
every tool's ``main`` is wrapped by :func:`main_guard` (``ecc_edge.cli``, light enough for the
light edge client too; ``--debug`` shows the traceback).
"""
import argparse
import os
import os.path as osp

from mmengine.config import DictAction
from mmengine.model import is_model_wrapper
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

from ecc_edge.cli import main_guard  # noqa: F401  (the tools import it from here)
from ecc_mmdet.apis import SPLIT_PARTS, load_config
from ecc_mmdet.apis.build_errors import config_error_of
from ecc_mmdet.utils import setup_cpu_distributed, use_data_classes
from ecc_mmdet.utils.checkpoint_check import CheckpointError, check_checkpoint, read_checkpoint


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the directory to save logs, checkpoints and metrics')
    parser.add_argument(
        '--data-root', help='dataset root for every dataloader and evaluator (ecc_mmdet '
        'extension; same as overriding each data_root / ann_file with --cfg-options)')
    parser.add_argument(
        '--classes-from-data', action='store_true', help='detect the classes of the training '
        "annotation file (every dataset's metainfo.classes and the model's num_classes)")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value (e.g. train_cfg.max_epochs=2)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_checkpoint_args(parser)


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--allow-partial-checkpoint`` and ``--debug``, for every tool that loads a model."""
    parser.add_argument(
        '--allow-partial-checkpoint', action='store_true',
        help='load a checkpoint that does not fit the model (missing, unexpected or reshaped '
        'keys): what fits is loaded, the rest keeps its initialisation. Without it such a '
        'checkpoint is refused')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error (by default: one line)')


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def base_cfg(args):
    """The config with the common arguments applied (launcher, data root, options, work dir)."""
    cfg = load_config(args.config, args.data_root, args.cfg_options)
    if args.classes_from_data:
        use_data_classes(cfg)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_runner(build_cfg, args):
    """``build_cfg(args) -> cfg``, then the Runner (a misspelled type or argument in the config
    raises a ConfigError naming its key)."""
    cfg = build_cfg(args)
    setup_cpu_distributed(cfg)
    try:
        return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    except (KeyError, TypeError) as e:
        error = config_error_of(e, cfg)
        if error is None:
            raise
        raise error from e


def check_runner_checkpoint(runner, training: bool, partial: bool = False) -> None:
    """Refuse, before the Runner loads it, a ``load_from``/``resume`` checkpoint that does not
    fit the model. Training from another checkpoint (not resuming) may lack or add the split
    parts (compressor, exits, router: a split student from its detector's weights, a dynamic
    model from its student); one INFO line says so."""
    cfg = runner.cfg
    resume, path = bool(cfg.get('resume')), cfg.get('load_from')
    if resume and path is None:
        path = find_latest_checkpoint(runner.work_dir)
    if path is None:
        return
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        if 'not found' not in str(e):
            raise
        raise CheckpointError(f'load_from={path!r}: checkpoint not found; train that stage '
                              'first, or give another with --cfg-options load_from=PATH') from None
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    allow = SPLIT_PARTS if training and not resume else ()
    check_checkpoint(model, ckpt, path, allow, partial, logger=runner.logger)


def write_report(out: str, res: dict, text: str, indent: int = 1) -> str:
    """A benchmark's JSON at ``out`` and its table beside it (``.txt``) -> the path stem
    (for a plot beside them)."""
    import json
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        json.dump(res, f, indent=indent)
    stem = osp.splitext(out)[0]
    with open(stem + '.txt', 'w') as f:
        f.write(text + '\n')
    return stem
