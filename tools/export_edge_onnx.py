"""Export the edge of a split detector for the light runtime: edge.onnx + edge.json.

    python tools/export_edge_onnx.py CONFIG CHECKPOINT --out-dir DIR

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
    return p.parse_args(argv)


def export(args):
    cfg = load_config(args.config)
    if not osp.isfile(args.checkpoint):
        raise ConfigError(f'Checkpoint not found: {args.checkpoint}')
    model = build_detector(cfg.model, args.checkpoint)
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
          f'PyTorch latent: max |diff| {diff:.2e}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
