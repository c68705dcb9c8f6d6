"""Export a split detector as two checkpoints, one per device: edge.pth and cloud.pth.

    python tools/export_edge_cloud.py CONFIG CHECKPOINT --out-dir DIR

Each file holds only the weights its side runs (:func:`ecc_mmdet.deployment.build_edge` /
``build_cloud``; the entropy model's tables are in both), plus the config text, so a device
never receives the other side's weights. Load one into the model built from the same config with
``load_checkpoint(model.build_edge(), 'edge.pth')`` (or ``build_cloud`` / ``cloud.pth``).
"""
import argparse
import os
import os.path as osp
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import add_checkpoint_args, main_guard
from mmengine.runner import save_checkpoint

from ecc_mmdet.apis.inference import build_detector, is_split_config, load_config
from ecc_mmdet.deployment import build_cloud, build_edge
from ecc_mmdet.utils import ConfigError
from ecc_mmdet.utils.modules import count_parameters


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a split (EdgeCloud*) detector config')
    p.add_argument('checkpoint', help='a checkpoint of that config')
    p.add_argument('--out-dir', required=True, help='where edge.pth and cloud.pth are written')
    add_checkpoint_args(p)
    return p.parse_args(argv)


def export(args):
    """-> {side: (path, parameter count, file bytes)}."""
    cfg = load_config(args.config)
    if not osp.isfile(args.checkpoint):  # before building: a typo should not cost a model build
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    if not is_split_config(cfg.model):
        raise ConfigError(f'{args.config} builds a {cfg.model.type}, not a split '
                          '(EdgeCloud*) detector: there is no edge/cloud side to export')
    model = build_detector(cfg.model, args.checkpoint, partial=args.allow_partial_checkpoint)
    os.makedirs(args.out_dir, exist_ok=True)
    out = {}
    for name, build in (('edge', build_edge), ('cloud', build_cloud)):
        side = build(model)
        path = osp.join(args.out_dir, f'{name}.pth')
        meta = dict(side=name, config=cfg.pretty_text, source_checkpoint=args.checkpoint)
        save_checkpoint({'state_dict': side.state_dict(), 'meta': meta}, path)
        out[name] = (path, count_parameters([side]), osp.getsize(path))
    return out


@main_guard
def main(argv=None):
    out = export(parse_args(argv))
    for name, (path, params, size) in out.items():
        print(f'{name:5s} {params:>12,d} parameters  {size / 2**20:9.2f} MiB  {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
