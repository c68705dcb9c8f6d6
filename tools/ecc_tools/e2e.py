"""The system end to end over the network on this machine (the demo's last stage).

The dynamic model's light edge is exported (``tools/export_edge_onnx.py``, calibrated on the
calibration split), the cloud server (``tools/serve_cloud.py``) is started on 127.0.0.1 with a
token file in the work directory, and ``tools/edge_client.py --light`` streams the validation
images to it, one request in flight: every step is the command a user runs. The client's COCO
results are scored with the same ``CocoMetric`` as the in-process evaluation, which runs beside
it on the same calibrated model and gives the reference: per image the detections must be the
same (boxes within the JSON's 1e-3 px rounding, scores within 1e-5), and the payload bytes the
client sent must be ``CommunicationMetric``'s. End-to-end latency of an image = the light edge's
steps + the client's round trip (edge-finished images: the edge alone).
"""
import json
import os
import os.path as osp
import secrets
import sys
from typing import Dict, List, Optional

import numpy as np

from . import REPO
from .workflow import run_logged

# The served JSON rounds boxes to 1e-3 px and scores to 1e-9; beyond that, another runtime's
# float arithmetic (ONNX Runtime on the edge, one thread and batch 1 in the server) moves a
# calibrated score by up to ~3e-5 and a box by ~5e-4 px (measured on the demo's 100 images).
BOX_ATOL, SCORE_ATOL = 2e-3, 1e-4


def write_token(path: str) -> str:
    """A fresh bearer token in ``path``, readable by its owner only (never printed)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(secrets.token_urlsafe(24))
    return path


def in_process(config: str, checkpoint: str, data_root: str, bandwidth: float):
    """The calibrated dynamic model evaluated in this process (the table's system row) ->
    (metrics, per-image predictions, dataset, the tiers' score maps or None)."""
    from ecc_mmdet.apis import build_test_dataset, evaluate_detector

    from .rate_accuracy import ann_file_of, calibrated_dynamic_model
    model, cfg = calibrated_dynamic_model(config, checkpoint, data_root)
    dataset = build_test_dataset(cfg)
    preds: List[dict] = []
    metrics = evaluate_detector(model, dataset, ann_file=ann_file_of(cfg),
                                bandwidth_mbps=[bandwidth], predictions_out=preds,
                                progress=False)
    return metrics, preds, dataset, model.score_maps


def served_predictions(results_file: str, cat_ids) -> Dict[int, dict]:
    """The edge client's COCO results (xywh, category ids) -> per image id xyxy ``bboxes``,
    ``scores`` and ``labels`` (indices of ``cat_ids``), in the answer's order."""
    label_of = {c: i for i, c in enumerate(cat_ids)}
    out: Dict[int, dict] = {}
    for d in json.load(open(results_file)):
        p = out.setdefault(int(d['image_id']), dict(bboxes=[], scores=[], labels=[]))
        x, y, w, h = d['bbox']
        p['bboxes'].append([x, y, x + w, y + h])
        p['scores'].append(d['score'])
        p['labels'].append(label_of[d['category_id']])
    return out


def as_served(preds: List[dict]) -> Dict[int, dict]:
    """In-process predictions rounded as the server's JSON and the client's COCO file round
    them (a fair reference for the served mAP: that rounding alone moves COCO's ranking)."""
    out = {}
    for p in preds:
        boxes = [[round(v, 3) for v in b] for b in np.asarray(p['bboxes']).reshape(-1, 4).tolist()]
        out[int(p['img_id'])] = dict(
            bboxes=[[x1, y1, x1 + round(x2 - x1, 3), y1 + round(y2 - y1, 3)]
                    for x1, y1, x2, y2 in boxes],
            scores=[round(float(v), 9) for v in np.asarray(p['scores']).tolist()],
            labels=np.asarray(p['labels']).tolist())
    return out


def coco_map(dataset, ann_file: str, served: Dict[int, dict]) -> Dict[str, float]:
    """``CocoMetric`` (the evaluation's own class) on the served detections of every image of
    ``dataset`` (an image without an answer counts with no detection)."""
    import torch
    from mmengine.evaluator import Evaluator
    evaluator = Evaluator([dict(type='CocoMetric', ann_file=ann_file, metric='bbox',
                                format_only=False)])
    evaluator.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        info = dataset.get_data_info(i)
        p = served.get(int(info['img_id']), dict(bboxes=[], scores=[], labels=[]))
        evaluator.process(data_samples=[dict(
            img_id=info['img_id'], ori_shape=(info['height'], info['width']),
            pred_instances=dict(bboxes=torch.tensor(p['bboxes'], dtype=torch.float32).view(-1, 4),
                                scores=torch.tensor(p['scores'], dtype=torch.float32),
                                labels=torch.tensor(p['labels'], dtype=torch.int64)))])
    return evaluator.evaluate(len(dataset))


def _score_matches(score_map, ref: float, served: float) -> bool:
    """Scores within SCORE_ATOL, or, with the tier's calibration map, served within the mapped
    window of raw scores within SCORE_ATOL of the reference's (``ScoreMap.window``: the map is
    steep between close knots and turns another runtime's 1e-6 into more than SCORE_ATOL)."""
    if abs(served - ref) <= SCORE_ATOL:
        return True
    if score_map is None:
        return False
    low, high = score_map.window(ref, SCORE_ATOL)
    return float(low) - SCORE_ATOL <= served <= float(high) + SCORE_ATOL


def same_detections(ref: dict, served: Optional[dict], score_map=None) -> bool:
    """One image: the served detections are the in-process ones up to the JSON's rounding and
    another runtime's float error, matched one to one (same label, box and score within
    tolerance; ``score_map``: the calibration map of the tier that answered, see
    :func:`_score_matches`). Order is not compared: detections whose scores tie within the
    tolerance may come back in another order, and COCO ranks them as tied anyway."""
    n = len(ref['scores'])
    if served is None:
        return n == 0
    if len(served['scores']) != n:
        return False
    free = list(range(n))
    for box, score, label in zip(ref['bboxes'], ref['scores'], ref['labels']):
        hit = next((j for j in free if served['labels'][j] == label
                    and _score_matches(score_map, float(score), float(served['scores'][j]))
                    and np.allclose(served['bboxes'][j], box, atol=BOX_ATOL, rtol=0)), None)
        if hit is None:
            return False
        free.remove(hit)
    return True


def _stream(config: str, checkpoint: str, data_root: str, out_dir: str, ann_file: str) -> None:
    """Export the light edge, serve the cloud on loopback and stream the validation images
    through the light edge client -> ``results.json`` and ``timings.json`` in ``out_dir``."""
    from .serving_bench import server
    edge_dir = osp.join(out_dir, 'edge')
    run_logged([sys.executable, 'tools/export_edge_onnx.py', config, checkpoint, '--out-dir',
                edge_dir, '--data-root', data_root], osp.join(out_dir, 'export.log'))
    token_file = write_token(osp.join(out_dir, 'token'))
    with server(config, checkpoint, None, threads=1, token_file=token_file,
                extra_args=['--data-root', data_root], log_dir=out_dir) as (url, _):
        print(f'  cloud server on {url} (token in {token_file})', flush=True)
        run_logged([sys.executable, 'tools/edge_client.py', '--light', edge_dir, '--server', url,
                    '--source', osp.join(data_root, 'val'), '--token-file', token_file,
                    '--ann-file', ann_file, '--concurrency', 1, '--threads', 1,
                    '--out', osp.join(out_dir, 'results.json'),
                    '--timings', osp.join(out_dir, 'timings.json')],
                   osp.join(out_dir, 'client.log'))


def run_served(config: str, checkpoint: str, data_root: str, out_dir: str,
               bandwidth: float = 1.0) -> dict:
    """The served system against the in-process one -> a summary (written to
    ``out_dir/served.json``): mAP of both, payload bytes per image on the wire and
    CommunicationMetric's, end-to-end latency p50/p95, images whose detections differ."""
    from .rate_accuracy import ann_file_of
    from ecc_mmdet.apis import load_config
    os.makedirs(out_dir, exist_ok=True)
    data_root = osp.abspath(data_root)
    ann_file = ann_file_of(load_config(config, data_root))
    cwd = os.getcwd()
    os.chdir(REPO)  # the tools' relative paths
    try:
        _stream(config, checkpoint, data_root, out_dir, ann_file)
    finally:
        os.chdir(cwd)
    metrics, ref, dataset, maps = in_process(config, checkpoint, data_root, bandwidth)
    served = served_predictions(osp.join(out_dir, 'results.json'), dataset.cat_ids)
    timings = json.load(open(osp.join(out_dir, 'timings.json')))['images']
    e2e = [t['edge_ms'] + (t['client_ms'] or 0.0) for t in timings]
    tier_map = {int(t['img_id']): (maps or {}).get('cloud' if t['tier'] == 'cloud' else 'edge')
                for t in timings}
    differ = [int(p['img_id']) for p in ref
              if not same_detections(p, served.get(int(p['img_id'])),
                                     tier_map.get(int(p['img_id'])))]
    served_map = coco_map(dataset, ann_file, served)
    res = dict(
        images=len(ref), answered=len(timings),
        offloaded=sum(t['tier'] == 'cloud' for t in timings),
        mAP=100 * served_map.get('coco/bbox_mAP', 0.0),
        mAP_50=100 * served_map.get('coco/bbox_mAP_50', 0.0),
        in_process_mAP=100 * metrics.get('coco/bbox_mAP', 0.0),
        in_process_mAP_as_served=100 * coco_map(dataset, ann_file, as_served(ref)).get(
            'coco/bbox_mAP', 0.0),
        wire_bytes_per_image=sum(t['bytes'] for t in timings) / max(len(ref), 1),
        metric_bytes_per_image=metrics.get('comm/bytes_per_image_mean', 0.0),
        latency_ms=dict(p50=float(np.percentile(e2e, 50)), p95=float(np.percentile(e2e, 95))),
        differing_images=differ)
    with open(osp.join(out_dir, 'served.json'), 'w') as f:
        json.dump(res, f, indent=2)
    return res


def served_row(res: dict, setting: str) -> dict:
    """The served system as a row of the rate-accuracy table (latency: see ``summary_line``)."""
    from .rate_accuracy import SERVED
    return dict(method=SERVED, setting=setting, bytes_per_image=res['wire_bytes_per_image'],
                bbox_mAP=res['mAP'], bbox_mAP_50=res['mAP_50'], edge_gflops=None,
                cloud_gflops=None, edge_flops_fraction=None, latency_ms=None, real_to_est=None,
                offload_ratio=res['offloaded'] / max(res['images'], 1))


def summary_line(res: dict) -> str:
    lat, n = res['latency_ms'], res['images']
    return (f"served over HTTP (loopback, light edge client -> serve_cloud.py): {res['answered']}"
            f"/{n} images answered, {res['offloaded']} offloaded; mAP {res['mAP']:.1f} (in "
            f"process {res['in_process_mAP']:.1f}, {res['in_process_mAP_as_served']:.1f} with the "
            f"JSON's rounding); {res['wire_bytes_per_image']:.0f} B/image on "
            f"the wire (CommunicationMetric {res['metric_bytes_per_image']:.0f}); end-to-end "
            f"latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms; detections differ from "
            f"the in-process evaluation on {len(res['differing_images'])} of {n} images")
