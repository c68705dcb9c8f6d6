"""The cloud service: authentication, limits, idempotency, batching and metrics around a
:class:`~ecc_mmdet.serving.runtime.CloudRuntime`, independent of the HTTP front end.

The FastAPI app (:mod:`.app`) and the Ray Serve deployment (:mod:`.ray_deployment`) both hand
each upload to :meth:`CloudService.detect` (a feature payload), :meth:`CloudService.report`
(an edge-finished image's detections report) or :meth:`CloudService.adapt` (the online
adaptation routes ``/v1/adapt/*``, handled by an optional
:class:`~ecc_mmdet.serving.adaptation_service.AdaptationService`) and send back what it
returns, so every front end refuses the same things with the same status codes:

=======  ==================================================================================
status   when
=======  ==================================================================================
200      detections (JSON); for ``/v1/report``: the report's image id and box count; for an
         adaptation round or update: the PARAM_UPDATE bytes (``Ecc-Param-Seq``)
204      an adaptation round with nothing to learn yet, or no update newer than ``after``
400      a payload the decoder refuses (the body names the ``BitstreamError`` subclass), a
         malformed ``Idempotency-Key``, or malformed adaptation headers / edge id / JSON
401      no ``Authorization: Bearer`` header          403  a wrong token
404      adaptation: an edge id never registered (``UnknownEdgeError``), or a server started
         without ``--adapt`` (``AdaptationDisabled``)
408      the body did not arrive within ``body_timeout_s`` of the headers, or was still
         arriving ``shutdown_grace_s`` after shutdown began (``Connection: close``)
409      the payload was made by another model (fingerprint), or an edge claims an update
         sequence number past the latest this cloud issued (``UpdateAheadError``)
413      body over ``max_body_bytes``, or an image larger than ``max_input_side``
415      a ``Content-Type`` other than ``application/octet-stream`` (``application/json``
         for an edge's registration)
422      an ``Idempotency-Key`` already used for a different payload
429      adaptation: the edge's uploads waiting for a round, or the registered edges, are at
         their limit (``UploadLimitError``; run a round first: retrying alone does not help)
503      queue full, adaptation busy or shutting down (with ``Retry-After``)
=======  ==================================================================================

A client that goes away before its body is complete is one INFO line and the
``ecc_client_disconnects_total`` metric (:meth:`CloudService.client_disconnected`). Once
:meth:`CloudService.begin_drain` is called (shutdown began), requests whose bodies have arrived
are still answered, and uploads get ``shutdown_grace_s`` more before their 408.

Tokens are compared in constant time and never logged. A retried request with the same
``Idempotency-Key`` gets the first answer (computed once), so a client retrying after a lost
response never has an image counted twice. (Not ``X-Request-ID``: Ray Serve's proxy sets that
one on every request, which would fill the cache with keys nobody retries.) The cache is per
process: behind several workers or replicas a retry is recognised only when the balancer sends it
to the same one (sticky routing on the key), otherwise it is computed again -- still answered
once per request, but computed twice.
"""
import asyncio
import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from typing import AsyncIterator, Callable, Dict, Mapping, NamedTuple, Optional, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ecc_edge.codecs.bitstream import BitstreamError, ModelMismatchError
from ecc_edge.codecs.detections import unpack_detections
from .batching import DynamicBatcher, QueueFullError
from .runtime import CloudRuntime, LimitExceededError

__all__ = ['CloudService', 'Reply', 'ServingConfig']

logger = logging.getLogger('ecc_mmdet.serving')
_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')
CONTENT_TYPE = 'application/octet-stream'


class ServingConfig(NamedTuple):
    """Server settings (a config's ``serving`` dict overrides the defaults). The connection
    keys (``header_timeout_s``, ``max_connections*``) and the drain (``shutdown_grace_s``) are
    the uvicorn front end's (:func:`ecc_mmdet.serving.app.serve`); behind Ray Serve its proxy
    holds the connections."""
    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    max_input_side: int = 2048
    retry_after_s: int = 1
    idempotency_entries: int = 1024
    body_timeout_s: float = 10.0  # from the headers to the body's last byte
    header_timeout_s: float = 5.0  # from a connection's opening or a request's first byte
    max_connections_per_client: int = 64  # per client address
    max_connections: int = 512  # all clients
    shutdown_grace_s: float = 2.0  # uploads still arriving when shutdown begins
    metrics_require_token: bool = False  # GET /metrics needs the bearer token too

    @classmethod
    def from_dict(cls, d: Optional[Mapping]) -> 'ServingConfig':
        d = dict(d or {})
        d.pop('ray', None)  # the Ray Serve deployment's own options
        unknown = set(d) - set(cls._fields)
        if unknown:
            raise ValueError(f'unknown serving option(s) {sorted(unknown)}; known: '
                             f'{", ".join(cls._fields)}, ray')
        def positive(k, or_zero=False):
            v = d[k]
            return isinstance(v, (int, float)) and (v >= 0 if or_zero else v > 0)

        bad = [k for k in ('body_timeout_s', 'header_timeout_s', 'max_connections_per_client',
                           'max_connections', 'shutdown_grace_s')
               if k in d and not positive(k, or_zero=k == 'shutdown_grace_s')]
        if bad:
            raise ValueError(f'serving option(s) {bad} must be positive (shutdown_grace_s may '
                             'be 0)')
        return cls(**d)


class Reply(NamedTuple):
    status: int
    body: Union[Dict, bytes, None]  # JSON, a binary answer, or nothing (204)
    headers: Dict[str, str]


def _error(status: int, error: str, detail: str, **headers) -> Reply:
    return Reply(status, dict(error=error, detail=detail), dict(headers))


class CloudService:
    """One server process's (or Ray replica's) request handling.

    Args:
        runtime: the cloud runtime.
        report_sink: called with each accepted detections report (image id, detections in
            the server's JSON form, bytes); e.g. ``tools/serve_cloud.py --reports-out`` appends
            them to a JSON-lines file. None: reports are validated, counted and acknowledged.
        adaptation: an :class:`~ecc_mmdet.serving.adaptation_service.AdaptationService`
            (``tools/serve_cloud.py --adapt``); None: no online adaptation.
        token: the bearer token clients must send; None disables authentication (only for
            loopback experiments; the server CLI refuses it unless asked explicitly).
        config: a :class:`ServingConfig`.
    """

    def __init__(self, runtime: CloudRuntime, token: Optional[str],
                 config: ServingConfig = ServingConfig(),
                 report_sink: Optional[Callable[[Dict], None]] = None, adaptation=None):
        self.runtime, self.config, self.report_sink = runtime, config, report_sink
        #: an AdaptationService (``/v1/adapt/*``); None: those routes answer 404
        self.adaptation = adaptation
        self._token = None if token is None else token.encode()
        self.batcher = DynamicBatcher(self._predict, config.max_batch_size, config.max_wait_ms,
                                      config.max_queue)
        self._done: 'OrderedDict[str, tuple]' = OrderedDict()  # request id -> (digest, future)
        self.registry = CollectorRegistry()
        r = self.registry
        self.m_requests = Counter('ecc_requests', 'Uploads by route and status',
                                  ['route', 'status'], registry=r)
        self.m_latency = Histogram('ecc_request_latency_seconds', 'Server time per upload',
                                   ['route'],
                                   buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                   registry=r)
        self.m_queue = Gauge('ecc_queue_depth', 'Requests waiting for a batch', registry=r)
        self.m_batch = Histogram('ecc_batch_size', 'Images per cloud batch',
                                 buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.m_bytes = Counter('ecc_bytes_received', 'Payload bytes received', registry=r)
        self.m_replays = Counter('ecc_idempotent_replays', 'Retries answered from the cache',
                                 registry=r)
        self.m_disconnects = Counter('ecc_client_disconnects',
                                     'Clients gone before their body was complete', ['route'],
                                     registry=r)
        self.shutting_down = self.draining = False
        self._drain_at = float('inf')  # loop time when uploads still arriving get their 408
        self._drain_signal = None  # a future, done once shutdown began

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the batcher on the running loop (idempotent; front ends without a lifespan
        hook call it on the first request)."""
        self.batcher.start()

    async def stop(self) -> None:
        """Refuse new requests, finish the queued ones."""
        self.shutting_down = True
        await self.batcher.stop()

    def begin_drain(self) -> None:
        """Shutdown began (on the event loop): ``/readyz`` answers 503, uploads still arriving
        get ``shutdown_grace_s`` more, then 408; requests whose bodies arrived are answered."""
        if self.draining:
            return
        self.draining = True
        self._drain_at = asyncio.get_running_loop().time() + self.config.shutdown_grace_s
        self._drain_future().set_result(None)

    def _drain_future(self) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._drain_signal is None or self._drain_signal.get_loop() is not loop:
            self._drain_signal = loop.create_future()
        return self._drain_signal

    @property
    def ready(self) -> bool:
        return self.batcher.running and not (self.shutting_down or self.draining)

    def client_disconnected(self, route: str, client: str) -> None:
        """A client went away before its body was complete: one line and a count."""
        self.m_disconnects.labels(route=route).inc()
        logger.info('client %s disconnected before the end of its %s upload', client, route)

    # ------------------------------------------------------------------ requests
    def check_auth(self, headers: Mapping[str, str]) -> Optional[Reply]:
        if self._token is None:
            return None
        auth = headers.get('authorization', '')
        scheme, _, given = auth.partition(' ')
        if scheme.lower() != 'bearer' or not given.strip():
            return _error(401, 'Unauthorized', 'send "Authorization: Bearer <token>"',
                          **{'WWW-Authenticate': 'Bearer'})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return _error(403, 'Forbidden', 'the token is not valid for this server')
        return None

    async def read_body(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes]):
        """-> bytes, or a Reply refusing the body: declared or actual size over the limit (413),
        not complete within ``body_timeout_s`` or the shutdown grace (408, and the connection
        is closed: the rest of the body is not read)."""
        limit = self.config.max_body_bytes
        declared = headers.get('content-length')
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return _error(413, 'PayloadTooLarge', f'body of {declared} bytes; the limit is '
                          f'{limit}')
        deadline = asyncio.get_running_loop().time() + self.config.body_timeout_s
        buf = bytearray()
        it = chunks.__aiter__()
        while True:
            try:
                chunk = await self._next_chunk(it, deadline)
            except StopAsyncIteration:
                return bytes(buf)
            except asyncio.TimeoutError:
                why = ('the server is shutting down' if self._drain_at <= deadline else
                       f'the limit is {self.config.body_timeout_s:g} s')
                return _error(408, 'RequestTimeout', f'body incomplete ({len(buf)} of '
                              f'{declared or "?"} bytes) in time: {why}; send it again',
                              Connection='close')
            buf += chunk
            if len(buf) > limit:
                return _error(413, 'PayloadTooLarge', f'body over the {limit}-byte limit')

    async def _next_chunk(self, it: AsyncIterator[bytes], deadline: float) -> bytes:
        """``it``'s next chunk; TimeoutError at ``deadline`` or at the end of the shutdown
        grace, whichever comes first (the grace may begin while waiting)."""
        loop = asyncio.get_running_loop()
        nxt = asyncio.ensure_future(it.__anext__())
        try:
            while not nxt.done():
                remaining = min(deadline, self._drain_at) - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                drain = self._drain_future()
                await asyncio.wait({nxt} if drain.done() else {nxt, drain}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
            return nxt.result()
        finally:
            nxt.cancel()

    async def detect(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> Reply:
        """Handle one ``POST /v1/detect`` (a FEATURES payload); ``headers`` with lower-case
        names. With adaptation, an ``Ecc-Edge-Id`` + ``Ecc-Param-Seq`` pair is checked first
        (409 for parameters this cloud never issued); without, it is ignored."""
        async def run(data: bytes) -> Reply:
            denied = self.adaptation.check_params(headers) if self.adaptation else None
            return denied if denied is not None else await self._run(data)

        return await self._handle('detect', headers, chunks, run)

    async def adapt(self, action: str, headers: Mapping[str, str],
                    chunks: AsyncIterator[bytes], params: Mapping[str, str]) -> Reply:
        """Handle one online adaptation request: ``action`` ``register`` / ``upload`` /
        ``round`` / ``update``; ``params``: the path and query parameters."""
        if self.adaptation is None:
            async def off(data: bytes) -> Reply:
                return _error(404, 'AdaptationDisabled', 'this server does not adapt edges: '
                              'start tools/serve_cloud.py with --adapt')
            return await self._handle(f'adapt_{action}', headers, chunks, off, None)
        compute, ctype = self.adaptation.handler(action, headers, params)
        return await self._handle(f'adapt_{action}', headers, chunks, compute, ctype)

    async def report(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes]) -> Reply:
        """Handle one ``POST /v1/report``: the compact detections report of an image the edge
        finished itself (a DETECTIONS message), validated and handed to ``report_sink``."""
        return await self._handle('report', headers, chunks, self._take_report)

    async def _handle(self, route: str, headers, chunks, compute,
                      content_type: Optional[str] = CONTENT_TYPE) -> Reply:
        t0 = time.perf_counter()
        reply = await self._admit(headers, chunks, compute, content_type)
        self.m_requests.labels(route=route, status=str(reply.status)).inc()
        self.m_latency.labels(route=route).observe(time.perf_counter() - t0)
        if reply.status == 200 and route == 'detect':
            reply.body.setdefault('timings_ms', {})['server'] = (time.perf_counter() - t0) * 1e3
        return reply

    async def _admit(self, headers, chunks, compute,
                     content_type: Optional[str] = CONTENT_TYPE) -> Reply:
        """The checks every upload passes (auth, state, type, key, size), then ``compute``
        once per Idempotency-Key. ``content_type`` None: any (a request without a body)."""
        denied = self.check_auth(headers)
        if denied is not None:
            return denied
        if self.shutting_down:
            return _error(503, 'ShuttingDown', 'the server is shutting down',
                          **{'Retry-After': str(self.config.retry_after_s)})
        ctype = headers.get('content-type', '').split(';')[0].strip().lower()
        if content_type is not None and ctype != content_type:
            return _error(415, 'UnsupportedMediaType',
                          f'send the body as {content_type}, got {ctype or "none"}')
        rid = headers.get('idempotency-key')
        if rid is not None and not _REQUEST_ID.fullmatch(rid):
            return _error(400, 'BadIdempotencyKey', 'Idempotency-Key must be 1-128 characters of '
                          '[A-Za-z0-9._:-]')
        data = await self.read_body(headers, chunks)
        if isinstance(data, Reply):
            return data
        self.m_bytes.inc(len(data))
        return await (compute(data) if rid is None else self._once(rid, data, compute))

    async def _once(self, rid: str, data: bytes, compute) -> Reply:
        """``compute(data)`` once per Idempotency-Key ``rid``: a retry gets the first answer
        (a successful one; a refused request may be retried)."""
        digest = hashlib.sha256(data).digest()
        entry = self._done.get(rid)
        if entry is not None:
            if entry[0] != digest:
                return _error(422, 'IdempotencyKeyReused',
                              f'Idempotency-Key {rid} was used for a different payload')
            try:
                reply = await asyncio.shield(entry[1])
            except asyncio.CancelledError:
                if not entry[1].cancelled():  # this request itself was cancelled
                    raise
                return await compute(data)  # the first attempt was cancelled: compute it
            self.m_replays.inc()
            if isinstance(reply.body, bytes):  # a PARAM_UPDATE: said in a header
                return Reply(reply.status, reply.body, dict(reply.headers, **{
                    'Ecc-Replayed': '1'}))
            return Reply(reply.status, dict(reply.body, replayed=True), reply.headers)
        fut = asyncio.get_running_loop().create_future()
        self._done[rid] = (digest, fut)
        try:
            reply = await compute(data)
        except BaseException as e:  # cancelled: let a retry compute it
            self._done.pop(rid, None)
            fut.cancel()
            raise e
        if reply.status == 200:
            fut.set_result(reply)
            while len(self._done) > self.config.idempotency_entries:
                self._done.popitem(last=False)
        else:  # only successes are remembered: a refused request may be retried
            self._done.pop(rid, None)
            fut.set_result(reply)
        return reply

    async def _take_report(self, data: bytes) -> Reply:
        try:
            det = unpack_detections(data, expected_fingerprint=self.runtime.fingerprint)
        except ModelMismatchError as e:
            return _error(409, type(e).__name__, str(e))
        except BitstreamError as e:
            return _error(400, type(e).__name__, str(e))
        body = dict(image_id=det.img_id, detections=self.runtime.detections_json(
            det.bboxes, det.scores, det.labels), bytes=len(data))
        if self.report_sink is not None:
            self.report_sink(body)
        return Reply(200, dict(image_id=det.img_id, boxes=len(det.labels), bytes=len(data)), {})

    async def _run(self, data: bytes) -> Reply:
        try:
            parsed = self.runtime.parse(data)
        except LimitExceededError as e:
            return _error(413, type(e).__name__, str(e))
        except ModelMismatchError as e:
            return _error(409, type(e).__name__, str(e))
        except BitstreamError as e:
            return _error(400, type(e).__name__, str(e))
        self.start()
        self.m_queue.set(self.batcher.depth)
        try:
            result, info = await self.batcher.submit(parsed.key, parsed)
        except QueueFullError as e:
            return _error(503, 'QueueFull', str(e),
                          **{'Retry-After': str(self.config.retry_after_s)})
        except BitstreamError as e:  # found while decoding the body
            return _error(400, type(e).__name__, str(e))
        finally:
            self.m_queue.set(self.batcher.depth)
        if isinstance(result, BitstreamError):  # failed alone while decoding its body
            return _error(400, type(result).__name__, str(result))
        self.m_batch.observe(info.batch_size)
        body = dict(result, bytes=len(data), batch_size=info.batch_size)
        body['timings_ms'] = dict(body['timings_ms'], queue=info.queue_ms)
        return Reply(200, body, {})

    def _predict(self, items):
        """Batch function (worker thread). A payload that fails while decoding fails alone:
        the batch is retried image by image so its neighbours still get their answers."""
        try:
            return self.runtime.predict(items)
        except BitstreamError:
            if len(items) == 1:
                raise
        out = []
        for it in items:
            try:
                out.append(self.runtime.predict([it])[0])
            except BitstreamError as e:
                out.append(e)
        return out
