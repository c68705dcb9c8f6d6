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

No answered image is lost: each is appended to a journal (``--journal``, by default
``RESULTS.jsonl`` next to ``--out``) as its answer arrives, and ``--out``/``--timings`` are
written from it, also when the run fails. ``--resume`` reruns only the images the journal does
not hold (a journal of another config, checkpoint, export or source is refused). An unanswered
request (no connection, timeout, 408/429/502/503/504) is retried with the same request id for
``--retry-for`` seconds, waiting capped exponential back-off with jitter or the server's
``Retry-After``; other refusals are final.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from ecc_edge.cli import main_guard
from ecc_edge.client import CloudUnavailableError, EdgeResult, check_token
from ecc_edge.journal import Journal, JournalError, file_digest

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
EXIT_DONE, EXIT_REFUSED, EXIT_CONFIG, EXIT_GAVE_UP = 0, 1, 2, 3
EXIT_STATUS = f"""exit status:
  {EXIT_DONE}  every image answered (or the source stopped with Ctrl-C)
  {EXIT_REFUSED}  the server refused an image with a final answer (any status but 408, 429,
     502, 503, 504); the run stops there
  {EXIT_CONFIG}  a config, checkpoint, journal, token or source error
  {EXIT_GAVE_UP}  no answer within --retry-for (server down, unreachable or busy); the run
     stops there
  With {EXIT_REFUSED} and {EXIT_GAVE_UP} the answered images are in the journal and in --out /
  --timings, the others in RESULTS.missing.json: rerun with --resume for them."""


class ConfigError(ValueError):
    """A config, checkpoint, token or source problem (exit status 2)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument('--retry-for', type=float, default=60.0, metavar='SECONDS',
                   help='keep retrying an unanswered request (no connection, timeout, 408, '
                   '429, 502, 503, 504) this long after its first failure, with the same '
                   'request id (default: 60)')
    p.add_argument('--retries', type=int, default=None,
                   help='also stop after this many retries of one request (default: no limit '
                   'but --retry-for)')
    p.add_argument('--journal', metavar='PATH',
                   help='JSON-lines file each answer is appended to as it arrives (default: '
                   'RESULTS.jsonl next to --out, else next to --timings)')
    p.add_argument('--resume', action='store_true',
                   help='skip the images the journal already holds (same config, checkpoint '
                   'or export, source, --ann-file)')
    p.add_argument('--threads', type=int, default=None,
                   help='intra-op threads (torch, or ONNX Runtime with --light; default 1 there)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--data-root', help='dataset root with the calibration split (a dynamic '
                   'model calibrates its router and score maps on it)')
    p.add_argument('--sidecar-key-file', help='with --light: run only a sidecar signed with the '
                   'key in this file (tools/export_edge_onnx.py --sidecar-key-file)')
    p.add_argument('--allow-partial-checkpoint', action='store_true',
                   help='load a CHECKPOINT that does not fit CONFIG (what fits is loaded)')
    p.add_argument('--debug', action='store_true', help='show the traceback of an error')
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

    def fingerprint(self) -> str:
        """What a journal's ``source`` must match: a folder's image names, a video's name and
        size (a camera's frames are never the same twice: no resume there)."""
        if self.is_folder:
            names = hashlib.sha256('\n'.join(self.files).encode()).hexdigest()
            return f'{len(self.files)} images, names sha256:{names}'
        return f'video {osp.basename(self.spec)}, {osp.getsize(self.spec)} B'

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

    def __init__(self, folder: str, threads: int = 1, key_file: str = None):
        from ecc_edge.runtime import LightEdge, read_key_file
        self.edge = LightEdge(osp.join(folder, 'edge.onnx'), threads=threads,
                              key=read_key_file(key_file) if key_file else None)
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
            out.append(dict(bbox=[round(v, 3) for v in box], score=round(float(score), 9),
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
        return LightRunner(args.light, threads=args.threads or 1,
                           key_file=args.sidecar_key_file)
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
                        model=None if calibrated is None else calibrated[0],
                        partial_checkpoint=args.allow_partial_checkpoint)
    runner.edge_steps = EDGE_STEPS
    return runner


class _Sender:
    """Up to ``concurrency`` payloads in flight on sender threads; the edge waits for a slot
    instead of queueing without bound. Each answered image goes to the journal from its sender
    thread; the first failure is kept in ``error``, sets ``failed`` and stops the retries of
    the others (the run ends there)."""

    def __init__(self, client, concurrency: int, journal: Journal):
        self.client, self.journal = client, journal
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix='edge-send')
        self.slots = threading.BoundedSemaphore(concurrency)  # in-flight bound
        self.failed = threading.Event()
        self.error, self.error_file = None, None
        self._lock = threading.Lock()
        self.run_id = uuid.uuid4().hex[:12]  # request ids unique to this run, stable across retries

    def _send(self, rec: dict, res) -> None:
        request_id = f'{self.run_id}-{rec["img_id"]}'
        if res.tier == 'cloud':
            rec['answer'] = self.client.send(res.payload, request_id)
        else:  # the report of an edge-finished image: the answer is a receipt
            self.client.send_report(res.payload, request_id)
        self.journal.add(rec)

    def _done(self, rec: dict, fut) -> None:
        self.slots.release()
        if fut.exception() is None:
            return
        with self._lock:
            if self.error is None:
                self.error, self.error_file = fut.exception(), rec['file']
        self.failed.set()
        self.client.abort()  # the others need not wait out their budgets

    def submit(self, rec: dict, res) -> None:
        """Send the features (or the report of an edge-finished image) of ``rec``."""
        self.slots.acquire()  # blocks while --concurrency payloads are in flight
        fut = self.pool.submit(self._send, rec, res)
        fut.add_done_callback(lambda f: self._done(rec, f))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()


def _check_args(args):
    """The source, once the arguments that do not need the model are checked."""
    if not args.server.startswith(('http://', 'https://')):
        raise ConfigError(f'--server {args.server}: expected http://HOST:PORT or https://...')
    if args.concurrency < 1 or (args.max_images is not None and args.max_images < 1):
        raise ConfigError('--concurrency and --max-images must be >= 1')
    if args.retry_for < 0 or (args.retries is not None and args.retries < 0):
        raise ConfigError('--retry-for and --retries must be >= 0')
    journal = journal_path(args)
    if args.resume and not journal:
        raise ConfigError('--resume needs the journal: give --journal, or the --out (or '
                          '--timings) of the run to resume')
    if journal and osp.abspath(journal) in {osp.abspath(p) for p in (args.out, args.timings)
                                            if p}:
        raise ConfigError(f'--journal {journal} is also --out or --timings: give it a file of '
                          'its own')
    if args.resume and args.source.startswith('camera:'):
        raise ConfigError('--resume: a camera never shows the same frames twice')
    source = Source(args.source)
    if args.ann_file and not source.is_folder:
        raise ConfigError('--ann-file matches images by file name: it needs a folder source')
    return source


# ------------------------------------------------------------------------------- the journal
def _stem(path: str) -> str:
    root, ext = osp.splitext(path)
    return root if ext.lower() in ('.json', '.jsonl') else path


def journal_path(args):
    """``--journal``, else ``RESULTS.jsonl`` next to ``--out``, else next to ``--timings``;
    None when the run writes nothing at all."""
    base = args.out or args.timings
    return args.journal or (_stem(base) + '.jsonl' if base else None)


def missing_path(args):
    """Where the images not answered are listed: ``RESULTS.missing.json`` (or next to the
    journal)."""
    base = args.out or journal_path(args)
    return _stem(base) + '.missing.json' if base else None


def open_journal(args, source) -> Journal:
    """The run's journal (read, checked against this run when resuming, then opened for
    appending); an in-memory one when the run writes no file."""
    files = (dict(edge_onnx=osp.join(args.light, 'edge.onnx'),
                  edge_json=osp.join(args.light, 'edge.json')) if args.light else
             dict(config=args.config, checkpoint=args.checkpoint))
    if args.ann_file:
        files['ann_file'] = args.ann_file
    path = journal_path(args)
    identity, names = {}, {}
    if path:  # digests only when a journal is written
        identity = {k: file_digest(p) for k, p in files.items() if osp.isfile(p)}
        names = {k: osp.basename(p) for k, p in files.items()}
        identity['source'] = source.fingerprint()
        if args.data_root:  # a dynamic model's router is calibrated on it
            identity['data_root'] = osp.abspath(args.data_root)
    try:
        journal = Journal(path, identity, args.resume, names)
    except JournalError as e:
        raise ConfigError(str(e)) from None
    if journal.replaced:
        print(f'note: {path} held {journal.replaced} answered images of an unfinished run: '
              'starting it afresh (--resume would have kept them)', file=sys.stderr)
    elif journal.resumed:
        print(f'resuming {path}: {journal.resumed} images already answered', file=sys.stderr)
    return journal.open()


# ---------------------------------------------------------------------------------- the run
def _images(args, source, ann_ids, counts):
    """(pos, img_id, name, image) of the source within ``--max-images``: ``pos`` is the place
    in the source (and the image id without ``--ann-file``); images not in ``--ann-file`` are
    counted in ``counts['skipped']``."""
    pos = 0
    for name, image in source:
        if args.max_images and pos >= args.max_images:
            return
        if ann_ids is not None and name not in ann_ids:
            counts['skipped'] += 1
            continue
        yield pos, ann_ids[name] if ann_ids is not None else pos, name, image
        pos += 1


def _run_edge(args, source, runner, sender: _Sender, ann_ids, journal: Journal):
    """The edge over the source's images not in the journal, payloads handed to ``sender``
    (edge-finished images with nothing to send go to the journal at once) -> (records
    processed, images skipped (not in --ann-file), interrupted, wall seconds)."""
    records, counts, interrupted = [], dict(skipped=0), False
    every = max(1, (source.total or 1000) // 10)
    t0 = time.perf_counter()
    try:
        for pos, img_id, name, image in _images(args, source, ann_ids, counts):
            if sender.failed.is_set():
                break
            if img_id in journal.answered:  # resumed
                continue
            res = runner.process(image, img_id)
            rec = dict(pos=pos, img_id=img_id, file=name, tier=res.tier, steps_ms=res.timings_ms,
                       bytes=len(res.payload) if res.payload is not None else 0,
                       answer=res.detections)
            if res.payload is not None:  # features, or the report of an edge-finished image
                sender.submit(rec, res)
            else:
                journal.add(rec)
            records.append(rec)
            if len(records) % every == 0:
                rate = len(records) / (time.perf_counter() - t0)
                print(f'[{pos + 1}/{source.total or "?"}] {rate:.1f} images/s',
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # a camera runs until stopped: keep what was done
        interrupted = True
        sender.client.abort('interrupted')  # the answers on their way are kept, no retry waited
    finally:
        sender.close()
    return records, counts['skipped'], interrupted, time.perf_counter() - t0


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


def _write_json(path: str, obj) -> None:
    """``obj`` to ``path`` through a temporary file: a kill mid-write leaves the old file."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _write_outputs(args, journal, cat_ids, edge_steps, wall, skipped, interrupted) -> dict:
    """``--out`` and ``--timings`` from every image of the journal -> the timings summary."""
    results, timings = _results_and_timings(journal.records(), cat_ids, edge_steps)
    summary = summarize(timings, wall, skipped, interrupted, resumed=journal.resumed)
    for path, obj in ((args.out, results), (args.timings, dict(summary=summary,
                                                                images=timings))):
        if path:
            _write_json(path, obj)
    return summary


def _missing(args, source, ann_ids, journal, records):
    """The images not answered, as [{img_id, file}] -> (list, complete): all of a folder's;
    of a video only those the edge processed (the frames after them were never read)."""
    if source.is_folder:
        items = [(i, name) for _, i, name, _ in _images(args, source, ann_ids, dict(skipped=0))]
    else:
        items = [(r['img_id'], r['file']) for r in records]
    return [dict(img_id=i, file=n) for i, n in items if i not in journal.answered], \
        source.is_folder


def _report_failure(args, source, ann_ids, journal, sender, records) -> int:
    """The failed run's one-line summary and ``RESULTS.missing.json`` -> the exit status."""
    err = sender.error
    gave_up = isinstance(err, CloudUnavailableError)
    missing, complete = _missing(args, source, ann_ids, journal, records)
    path = missing_path(args)
    if path:
        _write_json(path, dict(missing=missing, complete=complete,
                               answered=len(journal.answered), error=str(err),
                               error_image=sender.error_file))
    saved = ', '.join(p for p in (journal.path, args.out, args.timings) if p) or 'nowhere'
    listed = f'listed in {path}' if path else 'not saved'
    print(f'error: image {sender.error_file}: {err}'.replace('\n', ' ') +
          f' -- {len(journal.answered)} images answered (saved: {saved}), '
          f'{len(missing)}{"" if complete else "+"} not ({listed}); '
          f'{"" if gave_up else "fix that and "}rerun with --resume for them', file=sys.stderr)
    return EXIT_GAVE_UP if gave_up else EXIT_REFUSED


def run(args, token) -> int:
    from ecc_edge.client import CloudClient
    source = _check_args(args)
    runner = build_runner(args)
    ann_ids, cat_ids = (load_ann_file(args.ann_file, runner.class_names) if args.ann_file
                        else (None, None))
    journal = open_journal(args, source)
    client = CloudClient(args.server, token, timeout=args.timeout, max_retries=args.retries,
                         concurrency=args.concurrency, retry_for=args.retry_for)
    sender, finished = _Sender(client, args.concurrency, journal), False
    try:
        records, skipped, interrupted, wall = _run_edge(args, source, runner, sender, ann_ids,
                                                        journal)
        s = _write_outputs(args, journal, cat_ids, runner.edge_steps, wall, skipped,
                           interrupted)
        finished = sender.error is None and not interrupted
    finally:
        journal.close(done=finished)
    if sender.error is not None:
        return _report_failure(args, source, ann_ids, journal, sender, records)
    if not s['images']:
        print('error: no image processed' + (' (none of the folder\'s images is in --ann-file)'
                                             if skipped else ''), file=sys.stderr)
        return EXIT_CONFIG
    stale = missing_path(args)
    if stale and osp.exists(stale):  # the list of an earlier failed run: all answered now
        os.remove(stale)
    print(f'{s["images"]} images, {s["offloaded"]} offloaded, {s["edge_finished"]} finished on '
          f'the edge; {s["bytes_per_image"]:.0f} B/image ({s["bytes_per_offloaded"]:.0f} B per '
          f'offloaded); {s["images_per_s"]:.2f} images/s; round trip {s["mean_client_ms"]:.1f} '
          f'ms mean; {s["retries"]} retries' + (f'; {skipped} images not in --ann-file skipped'
                                               if skipped else '') +
          (f'; {s["resumed"]} from the journal' if s['resumed'] else ''), flush=True)
    return EXIT_DONE


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


def summarize(rows, wall_s, skipped, interrupted, resumed=0) -> dict:
    """Totals and means over every answered image; ``images_per_s`` over this run's own
    (``resumed`` ones came from the journal of an earlier run)."""
    off = [r for r in rows if r['tier'] == 'cloud']
    n = len(rows)
    total_bytes = sum(r['bytes'] for r in rows)  # features and edge reports: all uplink
    return dict(images=n, offloaded=len(off), edge_finished=n - len(off),
                bytes_per_image=total_bytes / max(n, 1),
                bytes_per_offloaded=sum(r['bytes'] for r in off) / len(off) if off else 0.0,
                images_per_s=(n - resumed) / wall_s if wall_s > 0 else 0.0, wall_s=wall_s,
                mean_edge_ms=sum(r['edge_ms'] for r in rows) / max(n, 1),
                mean_client_ms=sum(r['client_ms'] for r in off) / len(off) if off else 0.0,
                retries=sum(r['retries'] for r in rows), skipped=skipped,
                interrupted=interrupted, resumed=resumed)


@main_guard
def main(argv=None):
    """A user error (config, checkpoint, journal, token, sidecar, source) is one ``error:``
    line and exit code 2 (``main_guard``; ``--debug`` shows the traceback)."""
    args = parse_args(argv)
    return run(args, read_token(args))


if __name__ == '__main__':
    sys.exit(main())
