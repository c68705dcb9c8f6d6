"""The edge device's HTTP side: send payloads to the cloud server (``tools/serve_cloud.py``)
with idempotent retries; no torch, mmdet or mmcv (the light edge runtime uses it as is, and so
does :mod:`ecc_mmdet.serving.client`).

:class:`CloudClient` posts payloads over one keep-alive connection pool. A request that got no
answer (connection error, timeout) or a transient refusal (408, 429, 502, 503, 504) is retried
with the same ``Idempotency-Key`` for a time budget (``retry_for``), not a count: a server
restart takes as long as it takes, and a count of retries is a guess at it. The waits are
capped exponential back-off with full jitter (:func:`backoff_delay`), never shorter than a
``Retry-After``. The server answers a repeated key from its cache, so a retry after a lost
response never has an image computed or counted twice. Other refusals are final. The bearer
token is sent in a header only: it is never logged, put in an exception or a repr.

An adapting edge (server started with ``--adapt``) registers itself (:meth:`CloudClient.
register_edge`), uploads selected images (:meth:`~CloudClient.upload_for_adaptation`), asks for
update rounds (:meth:`~CloudClient.adapt_round`) and catches up on missed updates
(:meth:`~CloudClient.fetch_update`), with the same retries; a 429 ``UploadLimitError`` (the
edge's pending uploads are at the cloud's limit) is final: only a round makes room.
"""
import email.utils
import json
import random
import re
import threading
import time
import uuid
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ['CloudClient', 'CloudRequestError', 'CloudUnavailableError', 'EdgeResult',
           'ParamUpdateAnswer', 'RETRY_STATUSES', 'backoff_delay', 'check_token',
           'coco_results']

_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')  # what the server accepts
_EDGE_ID = re.compile(r'[A-Za-z0-9._-]{1,64}')  # what an adapting cloud accepts
_TOKEN = re.compile(r'[\x21-\x7e]+')  # visible ASCII: what an HTTP header can carry
#: answers that say "not now" rather than "no": request timeout, too many requests, and a
#: gateway or server that is (re)starting, overloaded or shutting down
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


def check_token(token: str) -> str:
    """``token`` if it can be sent as a bearer token; a ValueError that does not quote it
    otherwise (httpx would refuse it later with the header value in its message)."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError('the bearer token must be one word of visible ASCII characters (no '
                         'spaces, line breaks or non-ASCII)')
    return token


class CloudRequestError(RuntimeError):
    """The server refused a request (a final answer: retrying would get the same one).

    Attributes: ``status`` (HTTP status; None when no answer came), ``error`` (the server's
    error name, e.g. ``ModelMismatchError``) and ``detail``."""

    def __init__(self, status: Optional[int], error: str, detail: str):
        self.status, self.error, self.detail = status, error, detail
        super().__init__(f'cloud server answered {status} {error}: {detail}' if status else
                         f'{error}: {detail}')


class CloudUnavailableError(CloudRequestError):
    """No answer within the retry budget (server unreachable, timing out, or answering 408,
    429, 502, 503 or 504), or the retries were stopped by :meth:`CloudClient.abort`."""

    def __init__(self, status: Optional[int], error: str, detail: str, attempts: int,
                 seconds: Optional[float] = None):
        self.attempts, self.seconds = attempts, seconds
        spent = f' in {seconds:.1f} s' if seconds is not None else ''
        super().__init__(status, error, f'{detail} (gave up after {attempts} attempts{spent})')


def backoff_delay(attempt: int, retry_after: Optional[float], remaining: float,
                  base: float = 0.2, cap: float = 5.0, u: float = 1.0) -> float:
    """Seconds to wait before retry ``attempt + 1``: capped exponential back-off with full
    jitter, ``u * min(cap, base * 2**attempt)`` with ``u`` uniform in [0, 1), so that clients
    that failed together do not come back together; after a ``Retry-After`` of ``retry_after``
    seconds, that plus the jitter (the server said when it will have room: never sooner). Never
    past the budget: at most ``remaining`` (then one last attempt at its end)."""
    step = u * min(cap, base * 2.0**min(attempt, 64))
    delay = step if retry_after is None else retry_after + step
    return max(0.0, min(delay, remaining))


class CloudClient:
    """Sends payloads to ``POST {base_url}/v1/detect``; safe to share between threads.

    Args:
        base_url: e.g. ``http://10.0.0.5:8000``.
        token: the bearer token (None: no ``Authorization`` header, for a server started with
            ``--insecure-no-auth``).
        timeout: seconds for connecting, each read/write and waiting for a pooled connection.
        max_retries: also stop after this many retries of one request (None: the time budget
            alone decides).
        backoff_s: the first back-off step; doubled each retry up to ``max_delay_s``
            (:func:`backoff_delay`).
        concurrency: connections kept open (size it to the requests you keep in flight: more
            requests than connections wait for one, counted in their time).
        max_delay_s: cap on one back-off step (a ``Retry-After`` is capped by the budget only).
        retry_for: seconds a request keeps being retried after its first failure.
        clock, sleep: the budget's clock and the wait (tests inject them; the default wait
            returns early on :meth:`abort`).
    """

    def __init__(self, base_url: str, token: Optional[str], timeout: float = 30,
                 max_retries: Optional[int] = None, backoff_s: float = 0.2,
                 concurrency: int = 4, max_delay_s: float = 5.0, retry_for: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Optional[Callable[[float], object]] = None):
        import httpx
        if (max_retries is not None and max_retries < 0) or concurrency < 1 or retry_for < 0:
            raise ValueError('max_retries and retry_for must be >= 0 and concurrency >= 1')
        self.base_url = base_url.rstrip('/')
        self.max_retries, self.backoff_s, self.max_delay_s = max_retries, backoff_s, max_delay_s
        self.retry_for = retry_for
        headers = {'Content-Type': 'application/octet-stream'}
        self._token = token or None
        if token:
            headers['Authorization'] = f'Bearer {check_token(token)}'
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency,
                                max_keepalive_connections=concurrency))
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._stop, self._stopped = threading.Event(), None
        self._clock, self._sleep = clock, sleep or self._stop.wait

    def __repr__(self) -> str:  # no token in here
        return f'CloudClient({self.base_url!r}, retry_for={self.retry_for})'

    def __enter__(self) -> 'CloudClient':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def abort(self, reason: str = 'another request gave up') -> None:
        """Stop retrying: requests waiting to retry raise :class:`CloudUnavailableError` now
        (e.g. once one request has given up, the others need not wait out their budgets)."""
        if not self._stop.is_set():  # the first reason stays
            self._stopped = reason
        self._stop.set()

    def send_report(self, report: bytes, request_id: str) -> Dict:
        """Post the detections report of an image finished on the edge (``/v1/report``), with
        the same retries as :meth:`send`."""
        return self.send(report, request_id, path='/v1/report')

    def send(self, payload: bytes, request_id: str, path: str = '/v1/detect',
             headers: Optional[Dict[str, str]] = None) -> Dict:
        """Post one payload -> the server's JSON answer plus ``retries`` (attempts - 1),
        ``client_ms`` (the whole exchange, waits included) and ``attempt_ms`` (the answered
        attempt alone, comparable with the server's ``timings_ms.server``). ``headers``: more
        request headers (e.g. ``Ecc-Edge-Id`` and ``Ecc-Param-Seq`` of an adapted edge).

        Raises :class:`CloudRequestError` for a final refusal (a status not in
        :data:`RETRY_STATUSES`) and :class:`CloudUnavailableError` once the budget is spent."""
        t0 = time.perf_counter()
        r, attempt, t_attempt = self._exchange('POST', path, payload, request_id, headers)
        return _answer(r, attempt, t0, t_attempt)

    def _exchange(self, method: str, path: str, content: Optional[bytes], request_id: str,
                  headers: Optional[Dict[str, str]] = None, params: Optional[Dict] = None,
                  ok: Sequence[int] = (200, ), final: Sequence[str] = ()):
        """One request, retried with the same ``Idempotency-Key`` -> (the response with a
        status in ``ok``, attempts - 1, when the answered attempt began). A refusal whose
        error name is in ``final`` is final even with a retry status."""
        import httpx
        if not _REQUEST_ID.fullmatch(request_id):
            raise ValueError(f'request id {request_id!r}: 1-128 characters of [A-Za-z0-9._:-]')
        headers = dict(headers or {}, **{'Idempotency-Key': request_id})
        first_failure, attempt = None, 0
        while True:
            t_attempt = time.perf_counter()
            try:
                r = self._http.request(method, path, content=content, headers=headers,
                                       params=params)
            except httpx.LocalProtocolError:  # our request is malformed: retrying won't help
                raise CloudRequestError(None, 'LocalProtocolError', 'httpx refused to send '
                                        'the request (a malformed header?)') from None
            except httpx.TransportError as e:  # no answer: it may or may not have run
                failure = (None, type(e).__name__, f'{self.base_url}: {self._redact(e)}', None)
            else:
                if r.status_code in ok:
                    return r, attempt, t_attempt
                error, detail = _error_of(r)
                if r.status_code not in RETRY_STATUSES or error in final:
                    raise CloudRequestError(r.status_code, error, detail)
                failure = (r.status_code, error, detail, r.headers.get('retry-after'))
            first_failure = self._clock() if first_failure is None else first_failure
            self._wait(attempt, failure, first_failure)
            attempt += 1

    # -------------------------------------------------------------- online adaptation
    def register_edge(self, edge_id: str, fingerprint: bytes, reset: bool = False) -> Dict:
        """Register this edge for online adaptation (``POST /v1/adapt/edges/{edge_id}``;
        idempotent: a known edge keeps its state unless ``reset``) -> ``edge_id``, ``seq`` (the
        latest update issued to it) and ``num_skipped``."""
        body = json.dumps(dict(fingerprint=bytes(fingerprint).hex(), reset=bool(reset)))
        r = self._adapt('POST', f'/v1/adapt/edges/{_edge_id(edge_id)}', body.encode(),
                        {'Content-Type': 'application/json'})
        return _json_of(r)

    def upload_for_adaptation(self, edge_id: str, messages: Sequence[bytes],
                              img_ids: Sequence[int]) -> Dict:
        """Upload images (IMAGE messages, e.g. those an edge batch selected; labelled as one
        batch) for the edge's next update round -> ``image_ids``, the teacher's
        ``detections`` of each (original-image coordinates), ``num_skipped`` and ``pending``.
        Over the edge's pending limit: :class:`CloudRequestError` 429 ``UploadLimitError`` (run
        a round first)."""
        if not messages or len(messages) != len(img_ids):
            raise ValueError('upload one or more IMAGE messages, each with its image id')
        headers = {'Ecc-Edge-Id': _edge_id(edge_id),
                   'Ecc-Image-Id': ','.join(str(int(i)) for i in img_ids),
                   'Ecc-Image-Bytes': ','.join(str(len(m)) for m in messages)}
        return _json_of(self._adapt('POST', '/v1/adapt/upload', b''.join(messages), headers))

    def adapt_round(self, edge_id: str) -> Optional['ParamUpdateAnswer']:
        """Run the edge's update round -> its PARAM_UPDATE, or None: nothing to learn yet."""
        r = self._adapt('POST', '/v1/adapt/round', b'', {'Ecc-Edge-Id': _edge_id(edge_id)},
                        ok=(200, 204))
        return _update_of(r)

    def fetch_update(self, edge_id: str, after: int) -> Optional['ParamUpdateAnswer']:
        """The latest PARAM_UPDATE when newer than ``after`` (the sequence number the edge
        runs), else None; 409 ``UpdateAheadError`` when ``after`` is past the cloud's latest."""
        r = self._adapt('GET', '/v1/adapt/update', None, {'Ecc-Edge-Id': _edge_id(edge_id)},
                        params=dict(after=int(after)), ok=(200, 204))
        return _update_of(r)

    def _adapt(self, method: str, path: str, content, headers, params=None, ok=(200, )):
        r, _, _ = self._exchange(method, path, content, f'adapt-{uuid.uuid4().hex}', headers,
                                 params, ok, final=('UploadLimitError', ))
        return r

    def _redact(self, e: Exception) -> str:
        """``str(e)`` without the token (exceptions end up in logs)."""
        text = str(e)
        return text.replace(self._token, '<token>') if self._token else text

    def _wait(self, attempt: int, failure: tuple, first_failure: float) -> None:
        """Wait before retry ``attempt + 1``; :class:`CloudUnavailableError` instead when the
        budget or ``max_retries`` is spent, or :meth:`abort` was called."""
        status, error, detail, retry_after = failure
        spent = self._clock() - first_failure
        if spent >= self.retry_for or self._stop.is_set() or \
                (self.max_retries is not None and attempt >= self.max_retries):
            raise CloudUnavailableError(status, error, detail + self._why(), attempt + 1, spent)
        with self._rng_lock:
            u = self._rng.random()
        self._sleep(backoff_delay(attempt, _seconds(retry_after), self.retry_for - spent,
                                  self.backoff_s, self.max_delay_s, u))
        if self._stop.is_set():
            raise CloudUnavailableError(status, error, detail + self._why(), attempt + 1,
                                        self._clock() - first_failure)

    def _why(self) -> str:
        return f'; retries stopped ({self._stopped})' if self._stop.is_set() else ''


def _answer(r, attempt: int, t0: float, t_attempt: float) -> Dict:
    """The JSON object of a 200 answer with the client's figures added."""
    now = time.perf_counter()
    body = _json_of(r)
    body['retries'] = attempt
    body['client_ms'] = (now - t0) * 1e3
    body['attempt_ms'] = (now - t_attempt) * 1e3
    return body


def _json_of(r) -> Dict:
    """The JSON object of a 200 answer."""
    try:
        body = r.json()
    except ValueError:  # e.g. a proxy's page: not an answer of ours
        body = None
    if not isinstance(body, dict):
        raise CloudRequestError(200, 'BadResponse', f'not a JSON object: {r.text[:200]!r}')
    return body


class ParamUpdateAnswer(NamedTuple):
    """A PARAM_UPDATE from the cloud: its bytes, sequence number and the image ids the round
    trained on (empty for :meth:`CloudClient.fetch_update`)."""
    data: bytes
    seq: int
    trained_on: Tuple[int, ...]


def _edge_id(edge_id: str) -> str:
    if not isinstance(edge_id, str) or not _EDGE_ID.fullmatch(edge_id):
        raise ValueError(f'edge id {edge_id!r}: 1-64 characters of [A-Za-z0-9._-]')
    return edge_id




def _update_of(r) -> Optional[ParamUpdateAnswer]:
    """A 200 answer's PARAM_UPDATE (None for 204)."""
    if r.status_code == 204:
        return None
    try:
        seq = int(r.headers['ecc-param-seq'])
        ids = r.headers.get('ecc-trained-on-ids', '')
        trained_on = tuple(int(i) for i in ids.split(',')) if ids else ()
    except (KeyError, ValueError):
        raise CloudRequestError(r.status_code, 'BadResponse', 'a PARAM_UPDATE answer without '
                                'a valid Ecc-Param-Seq / Ecc-Trained-On-Ids header') from None
    return ParamUpdateAnswer(r.content, seq, trained_on)


def _seconds(retry_after: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds (a number, or an HTTP date); None when absent or unreadable
    (then: our own back-off)."""
    if retry_after is None:
        return None
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None


def _error_of(r) -> tuple:
    """(error name, detail) of a refusal: the server's JSON, or the start of whatever a proxy
    in between answered."""
    try:
        body = r.json()
        return str(body.get('error', f'HTTP{r.status_code}')), str(body.get('detail', ''))
    except ValueError:
        return f'HTTP{r.status_code}', r.text[:200]


# ---------------------------------------------------------------------------------- edge side
class EdgeResult(NamedTuple):
    """What the edge did with one image: ``tier`` 'cloud' with the feature ``payload`` to send,
    or the exit that finished it with its ``detections`` (same format as the server's answer)
    and, for a model with ``edge_report``, its detections report as ``payload`` (else None);
    ``timings_ms``: ``load`` (test pipeline), ``preprocess`` (normalise and pad) and the
    deployment meter's steps (``edge``, ``exit``, ``route``, ``encode``, ...)."""
    img_id: int
    tier: str
    payload: Optional[bytes]
    detections: Optional[Dict]
    timings_ms: Dict[str, float]


def coco_results(img_id: int, detections: List[Dict], cat_ids: Optional[Sequence[int]] = None
                 ) -> List[Dict]:
    """One image's detections as COCO result entries (bbox [x, y, w, h]); ``cat_ids[label]``
    is the category id (as mmdet's ``CocoDataset.cat_ids``), the label itself without it."""
    out = []
    for d in detections:
        x1, y1, x2, y2 = d['bbox']
        label = int(d['label'])
        out.append(dict(image_id=img_id,
                        category_id=int(cat_ids[label]) if cat_ids is not None else label,
                        bbox=[x1, y1, round(x2 - x1, 3), round(y2 - y1, 3)],
                        score=d['score']))
    return out
