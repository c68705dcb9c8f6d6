"""Export the edge of a split detector for the light runtime: edge.onnx + edge.json.

    python tools/export_edge_onnx.py CONFIG CHECKPOINT --out-dir DIR [--data-root DIR]
        [--sidecar-key-file KEY]

A dynamic model (edge exit + router) is calibrated first, as RouterCalibrationHook and the
benchmarks do (the router's threshold for its target offload ratio and, with
``calibrate_scores``, the per-tier score maps, on the config's calibration split under
``--data-root``); the calibrated threshold and maps go into the sidecar.

The graph maps a normalised, padded image batch to the compressor's latent; the sidecar holds
the preprocessing, the coding tables, the fingerprints and the class names
(:mod:`ecc_mmdet.deployment.edge_export`). The export is checked against PyTorch on two input
sizes before the tool reports success. Run the result with ``ecc_edge.runtime.LightEdge`` or
``tools/edge_client.py --light DIR`` (no torch, mmdet or mmcv needed there).

``--sidecar-key-file KEY`` signs the sidecar (HMAC-SHA256; e.g. ``openssl rand -hex 32 > KEY``):
an edge given the same key runs only sidecars signed with it (:mod:`ecc_edge.sidecar`).
"""
import argparse
import os
import os.path as osp
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import add_checkpoint_args, main_guard

from ecc_edge.sidecar import read_key_file
from ecc_mmdet.apis.inference import build_detector, is_split_config, load_config
from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
from ecc_mmdet.serving.runtime import class_names_of
from ecc_mmdet.utils import ConfigError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a split (EdgeCloud*) detector config')
    p.add_argument('checkpoint', help='its checkpoint (full, or edge.pth of export_edge_cloud)')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--data-root', help='dataset root of the calibration split (a dynamic model '
                   'with target_offload_ratio or calibrate_scores needs it)')
    p.add_argument('--sidecar-key-file', help='sign the sidecar with the key in this file '
                   '(HMAC-SHA256, >= 16 bytes): an edge given the key runs only signed sidecars')
    add_checkpoint_args(p)
    return p.parse_args(argv)


def check_calibration_data(cfg, args) -> None:
    """ConfigError, with the fix, when a dynamic model needs its calibration split and
    ``--data-root`` lacks it (before any model is built)."""
    from ecc_tools.dynamic import calibration_dataset_cfg, needs_calibration
    if not args.data_root or not needs_calibration(cfg):
        return
    ds = calibration_dataset_cfg(cfg)
    ann = osp.join(ds.get('data_root') or '', ds.get('ann_file') or '')
    if not osp.isfile(ann):
        raise ConfigError(
            f'--data-root {args.data_root} has no calibration split ({ann}, the dataset of the '
            f'config\'s RouterCalibrationHook), on which the dynamic model is calibrated before '
            'export: generate the synthetic set with one (python -m '
            'ecc_mmdet.datasets.synthetic_coco --out DIR --num-calib 400), or point --data-root '
            'at a dataset that has it')


def load_model(args):
    """(config, model): a dynamic model calibrated like ``load_dynamic``/``calibrate_dynamic``
    do for the tools."""
    cfg = load_config(args.config, args.data_root)
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    if not is_split_config(cfg.model):
        raise ConfigError(f'{args.config} builds a {cfg.model.type}, not a split detector')
    check_calibration_data(cfg, args)
    from ecc_tools.dynamic import calibrated_if_dynamic
    calibrated = calibrated_if_dynamic(args.config, args.checkpoint, args.data_root,
                                       'the export calibrates it there')
    if calibrated is not None:
        model, cfg = calibrated
        return cfg, model.eval()
    return cfg, build_detector(cfg.model, args.checkpoint,
                               partial=args.allow_partial_checkpoint)


def export(args):
    key = read_key_file(args.sidecar_key_file) if args.sidecar_key_file else None
    cfg, model = load_model(args)
    os.makedirs(args.out_dir, exist_ok=True)
    paths = export_edge_onnx(model, cfg, args.out_dir, class_names_of(cfg), args.opset, key=key)
    return paths, check_graph(paths[0], model)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    (graph, sidecar), diff = export(args)
    signed = ' (signed)' if args.sidecar_key_file else ''
    print(f'wrote {graph} ({osp.getsize(graph) / 1024:.0f} KiB) and {sidecar}{signed}; ONNX '
          f'Runtime vs PyTorch (latent and exit maps): max |diff| {diff:.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
