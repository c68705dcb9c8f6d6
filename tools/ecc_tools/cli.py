"""What ``tools/train.py`` and ``tools/test.py`` share: common arguments, config, launch."""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ecc_mmdet.apis import load_config
from ecc_mmdet.utils import ConfigError, DatasetNotFoundError, setup_cpu_distributed


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='the directory to save logs, checkpoints and metrics')
    parser.add_argument(
        '--data-root', help='dataset root for every dataloader and evaluator (ecc_mmdet '
        'extension; same as overriding each data_root / ann_file with --cfg-options)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value (e.g. train_cfg.max_epochs=2)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def base_cfg(args):
    """The config with the common arguments applied (launcher, data root, options, work dir)."""
    cfg = load_config(args.config, args.data_root, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def build_runner(build_cfg, args):
    """``build_cfg(args) -> cfg``, then the Runner; ``None`` after printing a config error."""
    try:
        cfg = build_cfg(args)
        setup_cpu_distributed(cfg)
    except (ConfigError, DatasetNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return None
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


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
