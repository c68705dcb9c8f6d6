"""The edge client: run the edge half of a split detector on images, a video or a camera, and send
each offloaded payload to the cloud server (``tools/serve_cloud.py``).

    ECC_SERVE_TOKEN=secret python tools/edge_client.py CONFIG CHECKPOINT \\
        --server http://HOST:8000 --source DIR|VIDEO|camera:0 [--out results.json] \\
        [--timings timings.json] [--ann-file instances_val.json] [--concurrency 4]

CHECKPOINT is the full checkpoint or the ``edge.pth`` of ``tools/export_edge_cloud.py``. The
token comes from ``--token-file`` or ``ECC_SERVE_TOKEN`` and is never printed.

The edge model runs in the main thread, one image at a time, while up to ``--concurrency``
payloads are in flight on sender threads: the network round trip of one image overlaps the edge
compute of the next, and when the server falls behind the edge waits instead of queueing
without bound. Retries reuse the image's request id, so the server never computes an image
twice (:class:`ecc_mmdet.serving.client.CloudClient`).

Outputs: ``--out`` COCO-format results (with ``--ann-file`` the ids of that annotation file,
matched by file name, so ``pycocotools`` can score them; otherwise images are numbered 0.. in
source order and ``category_id`` is the label); ``--timings`` per image: tier, bytes, retries,
the edge steps, the client round trip, the server's queue/decode/cloud/server time and what is
left for network and HTTP (round trip - server time).

Exit status: 0; 1 when the server refused an image or could not be reached after the retries
(the run stops at the first such image); 2 for a config, checkpoint, token or source error.
"""
import argparse
import json
import os
import os.path as osp
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ecc_edge.client import EdgeResult, check_token

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


class ConfigError(ValueError):
    """A config, checkpoint, token or source problem (exit status 2)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', nargs='?', help='a split (EdgeCloud*) detector config')
    p.add_argument('checkpoint', nargs='?',
                   help='its full checkpoint, or edge.pth of export_edge_cloud')
    p.add_argument('--light', metavar='DIR',
                   help='run the exported edge (edge.onnx + edge.json of export_edge_onnx) on '
                   'ONNX Runtime instead of CONFIG + CHECKPOINT: no torch/mmdet/mmcv imported')
    p.add_argument('--server', required=True, help='base URL of the cloud server')
    p.add_argument('--source', required=True,
                   help='a folder of images (sorted by name), a video file, or camera:N')
    p.add_argument('--token-file', help='file holding the bearer token (else ECC_SERVE_TOKEN)')
    p.add_argument('--insecure-no-auth', action='store_true',
                   help='send no token (a server started with --insecure-no-auth)')
    p.add_argument('--concurrency', type=int, default=4, help='payloads in flight at most')
    p.add_argument('--out', help='COCO-format results JSON')
    p.add_argument('--timings', help='per-image timings JSON')
    p.add_argument('--ann-file', help='COCO annotation file: image and category ids to use')
    p.add_argument('--max-images', type=int, default=None, help='stop after this many')
    p.add_argument('--timeout', type=float, default=30.0, help='seconds per HTTP step')
    p.add_argument('--retries', type=int, default=5,
                   help='retries of an unanswered or 503 request (same request id)')
    p.add_argument('--threads', type=int, default=None,
                   help='intra-op threads (torch, or ONNX Runtime with --light; default 1 there)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--data-root', help='dataset root with the calibration split (a dynamic '
                   'model calibrates its router and score maps on it)')
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ inputs
def read_token(args):
    """The bearer token from ``--token-file`` or ``ECC_SERVE_TOKEN``; None only when asked."""
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f'cannot read the token file: {e}')
        if not token:
            raise ConfigError(f'token file {args.token_file} is empty')
    else:
        token = os.environ.get('ECC_SERVE_TOKEN', '').strip()
        if not token and args.insecure_no_auth:
            return None
    if token:
        try:
            return check_token(token)
        except ValueError as e:
            raise ConfigError(f'{"--token-file" if args.token_file else "ECC_SERVE_TOKEN"}: '
                              f'{e}')
    raise ConfigError('no bearer token: pass --token-file or set ECC_SERVE_TOKEN '
                      '(--insecure-no-auth for a server without authentication)')


class Source:
    """Frames of a folder, a video or a camera, as (name, image) with image a path or a BGR
    array. Opened (and for videos the first frame read) at construction, so a bad source is
    reported before the model is built."""

    def __init__(self, spec: str):
        import cv2
        self.spec, self.files, self.total, self._cap, self._first = spec, None, None, None, None
        if spec.startswith('camera:'):
            index = spec.split(':', 1)[1]
            if not index.isdigit():
                raise ConfigError(f'--source {spec}: expected camera:N with N a device number')
            self._open(cv2.VideoCapture(int(index)), f'camera {index}')
        elif osp.isdir(spec):
            self.files = sorted(f for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTS))
            if not self.files:
                raise ConfigError(f'--source {spec}: no images ({", ".join(IMAGE_EXTS)}) in '
                                  'this folder')
            self.total = len(self.files)
        elif osp.isfile(spec):
            if spec.lower().endswith(IMAGE_EXTS):
                self.files = [osp.basename(spec)]
                self.total, self.spec = 1, osp.dirname(spec) or '.'
            else:
                cap = cv2.VideoCapture(spec)
                self._open(cap, f'video {spec}')
                n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                self.total = n if n > 0 else None
        else:
            raise ConfigError(f'--source {spec}: no such folder, video or image (or camera:N)')

    def _open(self, cap, what: str):
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            cap.release()
            raise ConfigError(f'--source: cannot read {what} with OpenCV')
        self._cap, self._first = cap, frame

    @property
    def is_folder(self) -> bool:
        return self.files is not None

    def __iter__(self):
        if self.is_folder:
            for f in self.files:
                yield f, osp.join(self.spec, f)
            return
        try:
            i, frame = 0, self._first
            while frame is not None:
                yield f'frame{i:06d}', frame
                ok, frame = self._cap.read()
                frame, i = (frame if ok else None), i + 1
        finally:
            self._cap.release()


def load_ann_file(path: str, class_names):
    """(file name -> image id, category id of each label) of a COCO annotation file; category
    ids are the file's categories (those named in the config's classes) in file order, as
    mmdet's CocoDataset maps labels."""
    try:
        with open(path) as f:
            coco = json.load(f)
        images, cats = coco['images'], coco['categories']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f'--ann-file {path}: not a readable COCO annotation file ({e})')
    if class_names:
        cats = [c for c in cats if c['name'] in class_names]
    ids = {}
    for im in images:
        ids.setdefault(im['file_name'], im['id'])
        ids.setdefault(osp.basename(im['file_name']), im['id'])
    return ids, [c['id'] for c in cats]


# ---------------------------------------------------------------------------------- the run
class LightRunner:
    """The exported edge on ONNX Runtime (``ecc_edge.runtime``), with EdgeRunner's interface.
    A graph without exits offloads every image; a dynamic model's graph finishes the images its
    router keeps on the edge (tier ``edge_main``, detections in the server's JSON form, a
    detections report as payload when the model has ``edge_report``)."""

    def __init__(self, folder: str, threads: int = 1):
        from ecc_edge.runtime import LightEdge
        self.edge = LightEdge(osp.join(folder, 'edge.onnx'), threads=threads)
        self.class_names = self.edge.class_names
        self.edge_steps = ('graph', 'encode') if self.edge.exit is None else \
            ('graph', 'route', 'encode', 'report')

    def detections_json(self, dets, meta) -> dict:
        """``detections_to_json`` of ``ecc_mmdet.serving.client``: boxes clamped to the image
        and rounded to 1e-3 px, scores to 1e-6."""
        h, w = meta.ori_shape
        boxes = dets.bboxes.astype('float32').copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        names = self.class_names
        out = []
        for box, score, label in zip(boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
            name = names[label] if names and label < len(names) else str(label)
            out.append(dict(bbox=[round(v, 3) for v in box], score=round(float(score), 6),
                            label=int(label), class_name=name))
        return dict(detections=out, image_size=[int(h), int(w)])

    def process(self, image, img_id: int) -> EdgeResult:
        r = self.edge.process(image, img_id)
        dets = None if r.detections is None else self.detections_json(r.detections, r.meta)
        return EdgeResult(img_id, r.tier, r.payload, dets, r.timings_ms)


def build_runner(args):
    """The light runtime (``--light``), or the PyTorch edge of CONFIG + CHECKPOINT."""
    if args.light:
        if args.config or args.checkpoint:
            raise ConfigError('--light DIR replaces CONFIG and CHECKPOINT: give one or the other')
        return LightRunner(args.light, threads=args.threads or 1)
    if not (args.config and args.checkpoint):
        raise ConfigError('give CONFIG and CHECKPOINT, or --light DIR')
    import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
    import torch

    from ecc_mmdet.evaluation.meter import EDGE_STEPS
    from ecc_mmdet.serving.client import EdgeRunner
    if args.threads:
        torch.set_num_threads(args.threads)
    from ecc_tools.dynamic import calibrated_if_dynamic
    calibrated = calibrated_if_dynamic(args.config, args.checkpoint, args.data_root,
                                       'the same images the cloud calibrates on')
    runner = EdgeRunner(args.config, args.checkpoint, device=args.device,
                        model=None if calibrated is None else calibrated[0])
    runner.edge_steps = EDGE_STEPS
    return runner


class _Sender:
    """Up to ``concurrency`` payloads in flight on sender threads; the edge waits for a slot
    instead of queueing without bound. ``failed`` is set by the first send that fails."""

    def __init__(self, client, concurrency: int):
        self.client = client
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix='edge-send')
        self.slots = threading.BoundedSemaphore(concurrency)  # in-flight bound
        self.failed = threading.Event()
        self.run_id = uuid.uuid4().hex[:12]  # request ids unique to this run, stable across retries

    def _done(self, fut):
        self.slots.release()
        if fut.exception() is not None:
            self.failed.set()

    def submit(self, rec: dict, res, index: int) -> None:
        """Send the features (or the report of an edge-finished image); the future goes in
        ``rec``."""
        self.slots.acquire()  # blocks while --concurrency payloads are in flight
        send = self.client.send if res.tier == 'cloud' else self.client.send_report
        key = 'future' if res.tier == 'cloud' else 'report_future'
        rec[key] = self.pool.submit(send, res.payload, f'{self.run_id}-{index}')
        rec[key].add_done_callback(self._done)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def _check_args(args):
    """The source, once the arguments that do not need the model are checked."""
    if not args.server.startswith(('http://', 'https://')):
        raise ConfigError(f'--server {args.server}: expected http://HOST:PORT or https://...')
    if args.concurrency < 1 or (args.max_images is not None and args.max_images < 1):
        raise ConfigError('--concurrency and --max-images must be >= 1')
    source = Source(args.source)
    if args.ann_file and not source.is_folder:
        raise ConfigError('--ann-file matches images by file name: it needs a folder source')
    return source


def _run_edge(args, source, runner, sender: _Sender, ann_ids):
    """The edge over the source, payloads handed to ``sender`` -> (records, images skipped
    (not in --ann-file), interrupted, wall seconds)."""
    records, skipped, interrupted = [], 0, False
    every = max(1, (source.total or 1000) // 10)
    t0 = time.perf_counter()
    try:
        for name, image in source:
            if sender.failed.is_set() or (args.max_images and len(records) >= args.max_images):
                break
            if ann_ids is not None:
                if name not in ann_ids:
                    skipped += 1
                    continue
                img_id = ann_ids[name]
            else:
                img_id = len(records)
            res = runner.process(image, img_id)
            rec = dict(img_id=img_id, file=name, tier=res.tier, steps_ms=res.timings_ms,
                       bytes=len(res.payload) if res.payload is not None else 0,
                       answer=res.detections)
            if res.payload is not None:  # features, or the report of an edge-finished image
                sender.submit(rec, res, len(records))
            records.append(rec)
            if len(records) % every == 0:
                rate = len(records) / (time.perf_counter() - t0)
                print(f'[{len(records)}/{source.total or "?"}] {rate:.1f} images/s',
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # a camera runs until stopped: keep what was done
        interrupted = True
    finally:
        sender.close()
    return records, skipped, interrupted, time.perf_counter() - t0


def _collect_answers(records) -> bool:
    """Put the cloud's detections into the records; False (said on stderr) when a send failed."""
    for rec in records:
        for key in ('future', 'report_future'):
            fut = rec.pop(key, None)
            if fut is None:
                continue
            if fut.exception() is not None:
                print(f'error: image {rec["file"]}: {fut.exception()}', file=sys.stderr)
                return False
            if key == 'future':  # the cloud's detections; a report's answer is a receipt
                rec['answer'] = fut.result()
    return True


def _results_and_timings(records, cat_ids, edge_steps):
    from ecc_edge.client import coco_results
    results, timings = [], []
    for rec in records:
        ans = rec['answer']
        try:
            results += coco_results(rec['img_id'], ans['detections'], cat_ids)
        except IndexError:
            raise ConfigError(f'--ann-file has {len(cat_ids)} categories of the config\'s '
                              'classes: labels beyond them cannot be mapped')
        timings.append(timing_row(rec, edge_steps))
    return results, timings


def run(args, token) -> int:
    from ecc_edge.client import CloudClient
    source = _check_args(args)
    runner = build_runner(args)
    ann_ids, cat_ids = (load_ann_file(args.ann_file, runner.class_names) if args.ann_file
                        else (None, None))
    client = CloudClient(args.server, token, timeout=args.timeout, max_retries=args.retries,
                         concurrency=args.concurrency)
    records, skipped, interrupted, wall = _run_edge(args, source, runner,
                                                    _Sender(client, args.concurrency), ann_ids)
    if not _collect_answers(records):
        return 1
    if not records:
        print('error: no image processed' + (' (none of the folder\'s images is in --ann-file)'
                                             if skipped else ''), file=sys.stderr)
        return 2
    results, timings = _results_and_timings(records, cat_ids, runner.edge_steps)
    summary = summarize(timings, wall, skipped, interrupted)
    for path, obj in ((args.out, results), (args.timings, dict(summary=summary,
                                                                images=timings))):
        if path:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
            with open(path, 'w') as f:
                json.dump(obj, f)
    s = summary
    print(f'{s["images"]} images, {s["offloaded"]} offloaded, {s["edge_finished"]} finished on '
          f'the edge; {s["bytes_per_image"]:.0f} B/image ({s["bytes_per_offloaded"]:.0f} B per '
          f'offloaded); {s["images_per_s"]:.2f} images/s; round trip {s["mean_client_ms"]:.1f} '
          f'ms mean; {s["retries"]} retries' + (f'; {skipped} images not in --ann-file skipped'
                                               if skipped else ''), flush=True)
    return 0


def timing_row(rec, edge_steps) -> dict:
    steps = rec['steps_ms']
    row = dict(img_id=rec['img_id'], file=rec['file'], tier=rec['tier'], bytes=rec['bytes'],
               edge_ms=sum(steps.get(k, 0.0) for k in edge_steps),
               encode_ms=steps.get('encode', 0.0), steps_ms=steps, retries=0, client_ms=None,
               attempt_ms=None, queue_ms=None, decode_ms=None, cloud_ms=None, server_ms=None,
               network_ms=None, batch_size=None, replayed=False)
    if rec['tier'] == 'cloud':
        ans, t = rec['answer'], rec['answer'].get('timings_ms', {})
        row.update(retries=ans['retries'], client_ms=ans['client_ms'],
                   attempt_ms=ans['attempt_ms'], queue_ms=t.get('queue'),
                   decode_ms=t.get('decode'), cloud_ms=t.get('cloud'),
                   server_ms=t.get('server'), batch_size=ans.get('batch_size'),
                   replayed=bool(ans.get('replayed', False)))
        if t.get('server') is not None:  # the answered attempt only: back-off waits excluded
            row['network_ms'] = ans['attempt_ms'] - t['server']
    return row


def summarize(rows, wall_s, skipped, interrupted) -> dict:
    off = [r for r in rows if r['tier'] == 'cloud']
    n = len(rows)
    total_bytes = sum(r['bytes'] for r in rows)  # features and edge reports: all uplink
    return dict(images=n, offloaded=len(off), edge_finished=n - len(off),
                bytes_per_image=total_bytes / n,
                bytes_per_offloaded=sum(r['bytes'] for r in off) / len(off) if off else 0.0,
                images_per_s=n / wall_s if wall_s > 0 else 0.0, wall_s=wall_s,
                mean_edge_ms=sum(r['edge_ms'] for r in rows) / n,
                mean_client_ms=sum(r['client_ms'] for r in off) / len(off) if off else 0.0,
                retries=sum(r['retries'] for r in rows), skipped=skipped,
                interrupted=interrupted)


def main(argv=None):
    args = parse_args(argv)
    errors = (ConfigError, FileNotFoundError)
    if args.light:
        from ecc_edge.runtime import EdgeRuntimeError
        errors += (EdgeRuntimeError, )
    else:  # the PyTorch edge's own errors (importing them loads ecc_mmdet)
        from ecc_mmdet.utils import ConfigError as ModelConfigError
        from ecc_mmdet.utils import DatasetNotFoundError
        errors += (ModelConfigError, DatasetNotFoundError)
    try:
        return run(args, read_token(args))
    except errors as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
