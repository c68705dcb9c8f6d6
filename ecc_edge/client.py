"""The edge device's HTTP side: send payloads to the cloud server (``tools/serve_cloud.py``)
with idempotent retries; no torch, mmdet or mmcv (the light edge runtime uses it as is, and so
does :mod:`ecc_mmdet.serving.client`).

:class:`CloudClient` posts payloads over one keep-alive connection pool. A request that got no
answer (connection error, timeout) or a 503 (queue full, shutting down) is retried with the
same ``Idempotency-Key``: the server answers a repeated key from its cache, so a retry after a
lost response never has an image computed or counted twice. Other refusals are final. The bearer
token is sent in a header only: it is never logged, put in an exception or a repr.
"""
import random
import re
import threading
import time
from typing import Dict, List, NamedTuple, Optional, Sequence

__all__ = ['CloudClient', 'CloudRequestError', 'CloudUnavailableError', 'EdgeResult',
           'check_token', 'coco_results']

_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')  # what the server accepts
_TOKEN = re.compile(r'[\x21-\x7e]+')  # visible ASCII: what an HTTP header can carry


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
    """No answer after every retry (server unreachable, timing out, or busy with 503)."""

    def __init__(self, status: Optional[int], error: str, detail: str, attempts: int):
        self.attempts = attempts
        super().__init__(status, error, f'{detail} (gave up after {attempts} attempts)')


class CloudClient:
    """Sends payloads to ``POST {base_url}/v1/detect``; safe to share between threads.

    Args:
        base_url: e.g. ``http://10.0.0.5:8000``.
        token: the bearer token (None: no ``Authorization`` header, for a server started with
            ``--insecure-no-auth``).
        timeout: seconds for connecting, each read/write and waiting for a pooled connection.
        max_retries: retries after the first attempt (connection errors, timeouts, 503).
        backoff_s: first back-off; doubled each retry, with jitter so that many clients that
            failed together do not come back together.
        concurrency: connections kept open (size it to the requests you keep in flight: more
            requests than connections wait for one, counted in their time).
        max_delay_s: cap on one wait, whatever ``Retry-After`` asks for.
    """

    def __init__(self, base_url: str, token: Optional[str], timeout: float = 30,
                 max_retries: int = 5, backoff_s: float = 0.2, concurrency: int = 4,
                 max_delay_s: float = 10.0):
        import httpx
        if max_retries < 0 or concurrency < 1:
            raise ValueError('max_retries must be >= 0 and concurrency >= 1')
        self.base_url = base_url.rstrip('/')
        self.max_retries, self.backoff_s, self.max_delay_s = max_retries, backoff_s, max_delay_s
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

    def __repr__(self) -> str:  # no token in here
        return f'CloudClient({self.base_url!r}, max_retries={self.max_retries})'

    def __enter__(self) -> 'CloudClient':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send_report(self, report: bytes, request_id: str) -> Dict:
        """Post the detections report of an image finished on the edge (``/v1/report``), with
        the same retries as :meth:`send`."""
        return self.send(report, request_id, path='/v1/report')

    def send(self, payload: bytes, request_id: str, path: str = '/v1/detect') -> Dict:
        """Post one payload -> the server's JSON answer plus ``retries`` (attempts - 1),
        ``client_ms`` (the whole exchange, waits included) and ``attempt_ms`` (the answered
        attempt alone, comparable with the server's ``timings_ms.server``).

        Raises :class:`CloudRequestError` for a refusal (4xx, or 5xx other than 503) and
        :class:`CloudUnavailableError` once the retries are spent."""
        import httpx
        if not _REQUEST_ID.fullmatch(request_id):
            raise ValueError(f'request id {request_id!r}: 1-128 characters of [A-Za-z0-9._:-]')
        headers = {'Idempotency-Key': request_id}
        t0 = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            t_attempt = time.perf_counter()
            try:
                r = self._http.post(path, content=payload, headers=headers)
            except httpx.LocalProtocolError:  # our request is malformed: retrying won't help
                raise CloudRequestError(None, 'LocalProtocolError', 'httpx refused to send '
                                        'the request (a malformed header?)') from None
            except httpx.TransportError as e:  # no answer: it may or may not have run
                if last:
                    raise CloudUnavailableError(None, type(e).__name__,
                                                f'{self.base_url}: {self._redact(e)}',
                                                attempt + 1) from None
                self._wait(attempt, None)
                continue
            if r.status_code == 200:
                now = time.perf_counter()
                try:
                    body = r.json()
                except ValueError:  # e.g. a proxy's page: not an answer of ours
                    body = None
                if not isinstance(body, dict):
                    raise CloudRequestError(200, 'BadResponse', 'not a JSON object: '
                                            f'{r.text[:200]!r}')
                body['retries'] = attempt
                body['client_ms'] = (now - t0) * 1e3
                body['attempt_ms'] = (now - t_attempt) * 1e3
                return body
            error, detail = _error_of(r)
            if r.status_code != 503:
                raise CloudRequestError(r.status_code, error, detail)
            if last:
                raise CloudUnavailableError(503, error, detail, attempt + 1)
            self._wait(attempt, r.headers.get('retry-after'))
        raise AssertionError('unreachable')

    def _redact(self, e: Exception) -> str:
        """``str(e)`` without the token (exceptions end up in logs)."""
        text = str(e)
        return text.replace(self._token, '<token>') if self._token else text

    def _wait(self, attempt: int, retry_after: Optional[str]) -> None:
        with self._rng_lock:
            jitter = self._rng.random()
        asked = _seconds(retry_after)
        if asked is not None:  # the server knows when it will have room: at least that long
            delay = min(asked, self.max_delay_s) + jitter * self.backoff_s
        else:  # 0.5x .. 1x of the exponential step ("equal jitter")
            delay = min(self.backoff_s * 2**attempt, self.max_delay_s) * (0.5 + 0.5 * jitter)
        time.sleep(delay)


def _seconds(retry_after: Optional[str]) -> Optional[float]:
    """``Retry-After`` in seconds; None when absent or an HTTP date (then: our own back-off)."""
    try:
        return max(0.0, float(retry_after)) if retry_after is not None else None
    except ValueError:
        return None


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
