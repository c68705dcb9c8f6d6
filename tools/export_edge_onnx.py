"""Export the edge of a split detector for the light runtime: edge.onnx + edge.json.

    python tools/export_edge_onnx.py CONFIG CHECKPOINT --out-dir DIR [--data-root DIR]

A dynamic model (edge exit + router) is calibrated first, as RouterCalibrationHook and the
benchmarks do (the router's threshold for its target offload ratio and, with
``calibrate_scores``, the per-tier score maps, on the config's calibration split under
``--data-root``); the calibrated threshold and maps go into the sidecar.

The graph maps a normalised, padded image batch to the compressor's latent; the sidecar holds
the preprocessing, the coding tables, the fingerprints and the class names
(:mod:`ecc_mmdet.deployment.edge_export`). The export is checked against PyTorch on two input
sizes before the tool reports success. Run the result with ``ecc_edge.runtime.LightEdge`` or
``tools/edge_client.py --light DIR`` (no torch, mmdet or mmcv needed there).
"""
import argparse
import os
import os.path as osp
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)

from ecc_mmdet.apis.inference import build_detector, load_config
from ecc_mmdet.deployment.edge_export import check_graph, export_edge_onnx
from ecc_mmdet.models.detectors.edge_cloud_base import EdgeCloudDetectorMixin
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
    return p.parse_args(argv)


def load_model(args):
    """(config, model): a dynamic model calibrated like ``load_dynamic``/``calibrate_dynamic``
    do for the tools."""
    cfg = load_config(args.config, args.data_root)
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    from ecc_tools.dynamic import calibrated_if_dynamic
    calibrated = calibrated_if_dynamic(args.config, args.checkpoint, args.data_root,
                                       'the export calibrates it there')
    if calibrated is not None:
        model, cfg = calibrated
        return cfg, model.eval()
    return cfg, build_detector(cfg.model, args.checkpoint)


def export(args):
    cfg, model = load_model(args)
    if not isinstance(model, EdgeCloudDetectorMixin):
        raise ConfigError(f'{args.config} builds a {type(model).__name__}, not a split detector')
    os.makedirs(args.out_dir, exist_ok=True)
    paths = export_edge_onnx(model, cfg, args.out_dir, class_names_of(cfg), args.opset)
    return paths, check_graph(paths[0], model)


def main(argv=None):
    args = parse_args(argv)
    try:
        (graph, sidecar), diff = export(args)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote {graph} ({osp.getsize(graph) / 1024:.0f} KiB) and {sidecar}; ONNX Runtime vs '
          f'PyTorch (latent and exit maps): max |diff| {diff:.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
