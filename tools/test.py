"""Test (and evaluate) a detector: MMDetection's tools/test.py with the ecc_mmdet plugin loaded.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--cfg-options ...]

A checkpoint that does not fit the config (another detector, the unsplit teacher's weights for a
split config) is refused before anything runs; ``--allow-partial-checkpoint`` loads what fits.
"""
import argparse
import os.path as osp
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import (add_common_args, base_cfg, build_runner, check_runner_checkpoint,
                           main_guard, parse)

from ecc_mmdet.utils import ConfigError, check_config, finish_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector (ecc_mmdet)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show-dir', help='save painted predictions under work_dir/timestamp/DIR')
    add_common_args(parser)
    return parse(parser, argv)


def build_cfg(args):
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f'--out must be a .pkl file, got {args.out}')
    cfg = base_cfg(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        args.show, args.wait_time = False, 0
        cfg = trigger_visualization_hook(cfg, args)
    check_config(cfg, mode='test')
    return cfg


@main_guard
def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(build_cfg, args)
    check_runner_checkpoint(runner, training=False, partial=args.allow_partial_checkpoint)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    finish_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
