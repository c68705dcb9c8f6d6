"""Test (and evaluate) a detector: MMDetection's tools/test.py with the ecc_mmdet plugin loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--cfg-options ...]
"""
import argparse
import os
import os.path as osp
import sys

try:
    import ecc_mmdet  # noqa: F401  (registers our components, patches checkpoint loading)
except ImportError:  # running from a checkout that is not pip-installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    import ecc_mmdet  # noqa: F401
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from ecc_mmdet.utils import ConfigError, DatasetNotFoundError, check_config, set_data_root


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector (ecc_mmdet)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save evaluation metrics and logs')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show-dir', help='save painted predictions under work_dir/timestamp/DIR')
    parser.add_argument(
        '--data-root', help='dataset root for every dataloader and evaluator (ecc_mmdet '
        'extension; same as overriding each data_root / ann_file with --cfg-options)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings in the config, key=value')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    if not osp.isfile(args.config):
        raise ConfigError(f'Config file not found: {args.config}')
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out must be a .pkl file, got {args.out}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    if args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        args.show, args.wait_time = False, 0
        cfg = trigger_visualization_hook(cfg, args)
    check_config(cfg, mode='test')
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = build_cfg(args)
    except (ConfigError, DatasetNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    return 0


if __name__ == '__main__':
    sys.exit(main())
