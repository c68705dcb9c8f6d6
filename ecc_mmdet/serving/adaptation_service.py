"""The online adaptation routes' request handling (``tools/serve_cloud.py --adapt``).

:class:`~ecc_mmdet.serving.service.CloudService` keeps the HTTP side -- token, body size and
time limits, idempotent retries, metrics -- and hands each ``/v1/adapt/*`` request's body to
:meth:`AdaptationService.handler`'s function, which runs it on an
:class:`~ecc_mmdet.adaptation.cloud_state.AdaptationHub`:

=========================================  ==================================================
route                                      answer
=========================================  ==================================================
``POST /v1/adapt/edges/{edge_id}``         JSON ``{"fingerprint": "<16 hex>", "reset":
                                           false}`` -> ``{"edge_id", "seq", "num_skipped"}``
``POST /v1/adapt/upload``                  ``Ecc-Edge-Id``, ``Ecc-Image-Id`` (ints, comma-
                                           separated) and, for several images,
                                           ``Ecc-Image-Bytes`` (their sizes); the IMAGE
                                           messages one after the other -> ``{"image_ids",
                                           "detections" (one list per image), "num_skipped",
                                           "pending"}``: the teacher's detections
``POST /v1/adapt/round``                   ``Ecc-Edge-Id`` -> the PARAM_UPDATE (``Ecc-Param-
                                           Seq``, ``Ecc-Trained-On`` count and
                                           ``Ecc-Trained-On-Ids``), or 204: nothing to learn
``GET /v1/adapt/update?after=N``           ``Ecc-Edge-Id`` -> the latest PARAM_UPDATE when
                                           newer than N, 204 when N is the latest
=========================================  ==================================================

The images of one upload (those an edge batch selected) are labelled as one batch: the
teacher's normalisation statistics follow the batch, as in process. The teacher's detections are
in original-image coordinates and not rounded (unlike ``/v1/detect``'s), so an edge scores them
exactly as an in-process loop would. Uploads, rounds
and registrations (teacher inference, training, a model copy, the state file) run in worker
threads, at most ``max_in_flight`` at once (more: 503 with ``Retry-After``); the hub's own lock
serialises them. ``/v1/detect`` with an ``Ecc-Edge-Id`` + ``Ecc-Param-Seq`` pair is checked here
too (:meth:`AdaptationService.check_params`).
"""
import asyncio
import json
import re
import threading
from typing import Awaitable, Callable, Dict, Mapping, Optional, Tuple

from ecc_edge.codecs.bitstream import FINGERPRINT_BYTES, BitstreamError, ModelMismatchError
from ecc_edge.codecs.param_update import unpack_params
from ..adaptation.cloud_state import UpdateAheadError
from ..errors import UnknownEdgeError, UploadLimitError
from .service import CONTENT_TYPE, Reply, _error

__all__ = ['AdaptationService', 'JSON_TYPE']

JSON_TYPE = 'application/json'
_INT = re.compile(r'-?[0-9]{1,18}')
Compute = Callable[[bytes], Awaitable[Reply]]


def _refusal(e: Exception) -> Reply:
    """The answer to what the hub raised (its message says what to do)."""
    status = (409 if isinstance(e, (ModelMismatchError, UpdateAheadError)) else
              400 if isinstance(e, (BitstreamError, ValueError)) else
              404 if isinstance(e, UnknownEdgeError) else
              429 if isinstance(e, UploadLimitError) else None)
    if status is None:
        raise e
    return _error(status, 'BadRequest' if type(e) is ValueError else type(e).__name__, str(e))


def _int_header(headers: Mapping[str, str], name: str):
    """The integer in header ``name`` -> int, or a 400 Reply."""
    value = headers.get(name.lower())
    if value is None or not _INT.fullmatch(value.strip()):
        return _error(400, 'BadRequest', f'send the header {name} as an integer, got {value!r}')
    return int(value)


def _split_upload(headers: Mapping[str, str], data: bytes):
    """An upload's body -> (IMAGE messages, their image ids), or a 400 Reply."""
    ids = headers.get('ecc-image-id', '').split(',')
    sizes = headers.get('ecc-image-bytes', str(len(data))).split(',')
    if not all(_INT.fullmatch(v.strip()) for v in ids + sizes) or len(ids) != len(sizes) \
            or sum(int(n) for n in sizes) != len(data) or min(int(n) for n in sizes) < 0:
        return _error(400, 'BadRequest', 'send Ecc-Image-Id (the image ids, comma-separated) '
                      'and, for several images, Ecc-Image-Bytes (their message sizes, adding '
                      'up to the body)')
    messages, at = [], 0
    for n in sizes:
        messages.append(data[at:at + int(n)])
        at += int(n)
    return messages, [int(i) for i in ids]


def _update_reply(update: Optional[bytes], seq: int, **headers) -> Reply:
    """200 with the update (its own sequence number in ``Ecc-Param-Seq``), or 204 with the
    edge's latest."""
    if update is None:
        return Reply(204, None, {'Ecc-Param-Seq': str(seq)})
    seq = unpack_params(update).seq  # the message's, whatever ran since
    return Reply(200, bytes(update), {'Ecc-Param-Seq': str(seq), **headers})


def teacher_detections(scored, class_names=None) -> list:
    """A scored DetDataSample -> the server's JSON detections, unrounded."""
    inst = scored.pred_instances
    out = []
    for box, score, label in zip(inst.bboxes.tolist(), inst.scores.tolist(),
                                 inst.labels.tolist()):
        name = class_names[label] if class_names and label < len(class_names) else str(label)
        out.append(dict(bbox=box, score=score, label=int(label), class_name=name))
    return out


class AdaptationService:
    """The adaptation routes over an ``AdaptationHub``.

    Args:
        hub: the per-edge adaptation states.
        class_names: names of the labels in the teacher's detections.
        max_in_flight: uploads, rounds and registrations running at once (worker threads).
        retry_after_s: the ``Retry-After`` of a busy answer.
    """

    def __init__(self, hub, class_names=None, max_in_flight: int = 2, retry_after_s: int = 1):
        if int(max_in_flight) < 1:
            raise ValueError(f'max_in_flight must be >= 1, got {max_in_flight}')
        self.hub, self.class_names = hub, class_names
        self.retry_after_s = int(retry_after_s)
        self._slots = threading.BoundedSemaphore(int(max_in_flight))

    def handler(self, action: str, headers: Mapping[str, str],
                params: Mapping[str, str]) -> Tuple[Compute, Optional[str]]:
        """-> (the function of the request's body, the Content-Type it needs)."""
        if action == 'register':
            return (lambda data: self._register(params.get('edge_id', ''), data)), JSON_TYPE
        if action == 'upload':
            return (lambda data: self._upload(headers, data)), CONTENT_TYPE
        if action == 'round':
            return (lambda data: self._round(headers)), None
        if action == 'update':
            return (lambda data: self._update(headers, params)), None
        raise ValueError(f'unknown adaptation action {action!r}')

    async def _work(self, fn, *args):
        """``fn(*args)`` in a worker thread when a slot is free -> its result, or the Reply
        refusing it (busy, or what the hub raised)."""
        if not self._slots.acquire(blocking=False):
            return _error(503, 'AdaptationBusy', 'other adaptation requests are running',
                          **{'Retry-After': str(self.retry_after_s)})
        try:
            return await asyncio.to_thread(fn, *args)
        except (BitstreamError, ValueError, UnknownEdgeError, UploadLimitError) as e:
            return _refusal(e)
        finally:
            self._slots.release()

    def _edge_id(self, headers: Mapping[str, str]):
        edge_id = headers.get('ecc-edge-id')
        return edge_id if edge_id else _error(400, 'BadRequest', 'send the header Ecc-Edge-Id')

    async def _register(self, edge_id: str, data: bytes) -> Reply:
        try:
            body = json.loads(data.decode() or '{}')
            fingerprint = bytes.fromhex(body['fingerprint'])
            reset = body.get('reset', False)
            if len(fingerprint) != FINGERPRINT_BYTES or not isinstance(reset, bool):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(400, 'BadRequest', 'send {"fingerprint": "<%d hex digits>", "reset": '
                          'false} as JSON' % (2 * FINGERPRINT_BYTES))
        out = await self._work(self._register_now, edge_id, fingerprint, reset)
        return out if isinstance(out, Reply) else Reply(200, out, {})

    def _register_now(self, edge_id: str, fingerprint: bytes, reset: bool) -> Dict:
        out = dict(self.hub.register(edge_id, fingerprint, reset=reset))
        out['num_skipped'] = self.hub.edges[edge_id].num_skipped
        return out

    async def _upload(self, headers: Mapping[str, str], data: bytes) -> Reply:
        edge_id, split = self._edge_id(headers), _split_upload(headers, data)
        for v in (edge_id, split):
            if isinstance(v, Reply):
                return v
        out = await self._work(self._upload_now, edge_id, *split)
        return out if isinstance(out, Reply) else Reply(200, out, {})

    def _upload_now(self, edge_id: str, messages, img_ids) -> Dict:
        scored = self.hub.upload(edge_id, messages, img_ids)
        edge = self.hub.edges[edge_id]
        return dict(image_ids=img_ids,
                    detections=[teacher_detections(s, self.class_names) for s in scored],
                    num_skipped=edge.num_skipped, pending=len(edge.adapter.pending))

    async def _round(self, headers: Mapping[str, str]) -> Reply:
        edge_id = self._edge_id(headers)
        if isinstance(edge_id, Reply):
            return edge_id
        out = await self._work(self._round_now, edge_id)
        if isinstance(out, Reply):
            return out
        (update, used), seq = out
        ids = sorted(used)
        return _update_reply(update, seq, **{'Ecc-Trained-On': str(len(ids)),
                                             'Ecc-Trained-On-Ids': ','.join(map(str, ids))})

    def _round_now(self, edge_id: str):
        return self.hub.round(edge_id), self.hub.edge_seq(edge_id)

    async def _update(self, headers: Mapping[str, str], params: Mapping[str, str]) -> Reply:
        edge_id = self._edge_id(headers)
        after = _int_header(dict(after=params.get('after')), 'after')
        for v in (edge_id, after):
            if isinstance(v, Reply):
                return v
        out = await self._work(self._update_now, edge_id, after)
        return out if isinstance(out, Reply) else _update_reply(*out)

    def _update_now(self, edge_id: str, after: int):
        return self.hub.update_after(edge_id, after), self.hub.edge_seq(edge_id)

    def check_params(self, headers: Mapping[str, str]) -> Optional[Reply]:
        """``/v1/detect``'s optional ``Ecc-Edge-Id`` + ``Ecc-Param-Seq``: None when absent or
        consistent; 409 when the edge runs parameters this cloud never issued, 404 for an
        unknown edge, 400 for half a pair. Reads the edge's sequence number without the hub's
        lock (an int; a round in progress must not block the event loop)."""
        edge_id, seq = headers.get('ecc-edge-id'), headers.get('ecc-param-seq')
        if edge_id is None and seq is None:
            return None
        if edge_id is None or seq is None or not _INT.fullmatch(seq.strip()):
            return _error(400, 'BadRequest', 'send Ecc-Edge-Id and Ecc-Param-Seq (an integer) '
                          'together, or neither')
        edge = self.hub.edges.get(edge_id)
        if edge is None:
            return _refusal(UnknownEdgeError(f'edge {edge_id!r} is not registered with this '
                                             'cloud: register it first'))
        if int(seq) > edge.seq:
            return _refusal(UpdateAheadError(
                f'edge {edge_id!r} runs update {int(seq)}, this cloud issued only {edge.seq}: '
                're-register it (reset) and restart it from its base parameters'))
        return None
