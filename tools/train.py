"""Train a detector: MMDetection's tools/train.py with the ecc_mmdet plugin loaded.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]

Several processes (GPUs, or CPUs with gloo): ``bash tools/dist_train.sh CONFIG N [args]``.

The checkpoint of ``--resume`` must fit the model exactly; a ``load_from`` checkpoint may lack
(or add) only the split parts (compressor, exits, router: a student from its detector's weights,
a dynamic model from its student), which then start from their initialisation. Anything else is
refused before training starts; ``--allow-partial-checkpoint`` loads what fits.
"""
import argparse
import os.path as osp
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import (add_common_args, base_cfg, build_runner, check_runner_checkpoint,
                           main_guard, parse)

from ecc_mmdet.utils import ConfigError, check_config, finish_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector (ecc_mmdet)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or (no value) from the latest checkpoint in '
        'the work directory')
    add_common_args(parser)
    return parse(parser, argv)


def build_cfg(args):
    cfg = base_cfg(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'enable' in cfg.get('auto_scale_lr', {}) and 'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise ConfigError('--auto-scale-lr needs auto_scale_lr.enable and '
                              'auto_scale_lr.base_batch_size in the config')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise ConfigError(f'--resume checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume
    check_config(cfg, mode='train')
    return cfg


@main_guard
def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(build_cfg, args)
    check_runner_checkpoint(runner, training=True, partial=args.allow_partial_checkpoint)
    runner.train()
    finish_distributed()
    return 0


if __name__ == '__main__':
    sys.exit(main())
