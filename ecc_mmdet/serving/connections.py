"""What uvicorn itself does not bound, for ``tools/serve_cloud.py``: how long a connection may
take to send its request headers, how many connections a client address and all clients may
hold open, and the drain on shutdown.

uvicorn times out idle keep-alive connections only between requests, so a client that sends half
of its headers holds the connection forever; its ``limit_concurrency`` is a single total (tasks
included) with no per-client share. :class:`ConnectionGuard` makes a uvicorn protocol class that

- answers ``408`` and closes a connection whose request headers are not complete within
  ``header_timeout_s`` of its first byte (or of being opened);
- answers ``429`` (the client's share, ``max_per_client``) or ``503`` (``max_total``) with
  ``Retry-After`` to the request of a connection opened over a cap, then closes it. Refused
  connections do not count towards the caps, but at most ``max_total`` of them wait for their
  request: beyond, a new refused connection is closed at once, so sockets stay bounded. The
  per-address table holds only addresses with open connections (state bounded by ``max_total``).

The body of a request is the service's to time (:meth:`CloudService.read_body`), so that every
front end has it. :class:`DrainingServer` tells the service that shutdown began before uvicorn
waits for the requests in flight: uploads still arriving get a short grace, then a 408.

Addresses are the TCP peers': behind a reverse proxy every client is the proxy's address, so set
``max_connections_per_client`` to at least ``max_connections`` there and let the proxy limit
clients.
"""
import json
from typing import Callable, Dict, Optional

import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ['ConnectionGuard', 'DrainingServer']

_HEADER_TIMEOUT = (b'HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n'
                   b'connection: close\r\ncontent-length: %d\r\n\r\n%s')


def _refusal(status: int, error: str, detail: str, retry_after_s: int):
    """An ASGI app answering every request with ``status`` and closing the connection."""
    body = json.dumps(dict(error=error, detail=detail)).encode()
    headers = [(b'content-type', b'application/json'),
               (b'content-length', str(len(body)).encode()),
               (b'retry-after', str(retry_after_s).encode()), (b'connection', b'close')]

    async def app(scope, receive, send):
        await send({'type': 'http.response.start', 'status': status, 'headers': headers})
        await send({'type': 'http.response.body', 'body': body})
    return app


class ConnectionGuard:
    """Open connections per client address and in total, and the header timeout; its
    :meth:`protocol` is the ``http`` class to give ``uvicorn.Config``.

    Args:
        max_per_client: connections one address may hold open (more: 429).
        max_total: connections all clients may hold open (more: 503).
        header_timeout_s: seconds for a request's headers to arrive.
        retry_after_s: the ``Retry-After`` of the refusals.
        registry: where the metrics go (the service's, so ``/metrics`` shows them).
    """

    def __init__(self, max_per_client: int, max_total: int, header_timeout_s: float,
                 retry_after_s: int, registry: CollectorRegistry):
        self.max_per_client, self.max_total = max_per_client, max_total
        self.header_timeout_s = header_timeout_s
        self.per_client: Dict[str, int] = {}
        self.total = 0
        self.refusing = 0  # refused connections waiting for their request (to answer it)
        self.m_open = Gauge('ecc_open_connections', 'Accepted connections open now',
                            registry=registry)
        self.m_refused = Counter('ecc_connections_refused', 'Connections refused over a cap',
                                 ['cap'], registry=registry)
        self.m_header_timeouts = Counter('ecc_header_timeouts',
                                         'Connections closed: request headers too slow',
                                         registry=registry)
        n = f'{max_per_client} connections'
        self._over_client = _refusal(429, 'TooManyConnections', f'this address holds {n} '
                                     'already; close some or retry later', retry_after_s)
        self._over_total = _refusal(503, 'ServerBusy', f'the server holds {max_total} '
                                    'connections already; retry later', retry_after_s)
        body = json.dumps(dict(error='RequestTimeout', detail='request headers not received '
                               f'within {header_timeout_s:g} s')).encode()
        self.header_timeout_reply = _HEADER_TIMEOUT % (len(body), body)

    def open(self, host: str) -> Optional[Callable]:
        """Count a new connection of ``host`` -> None (accepted) or the refusal app."""
        if self.per_client.get(host, 0) >= self.max_per_client:
            self.m_refused.labels(cap='per_client').inc()
            return self._over_client
        if self.total >= self.max_total:
            self.m_refused.labels(cap='total').inc()
            return self._over_total
        self.per_client[host] = self.per_client.get(host, 0) + 1
        self.total += 1
        self.m_open.set(self.total)
        return None

    def close(self, host: str) -> None:
        """An accepted connection of ``host`` closed."""
        n = self.per_client.pop(host) - 1
        if n:
            self.per_client[host] = n
        self.total -= 1
        self.m_open.set(self.total)

    def protocol(self) -> type:
        """uvicorn's HTTP protocol (httptools, else h11) with this guard."""
        return type('GuardedHTTPProtocol', (_Guarded, AutoHTTPProtocol), dict(guard=self))


class _Guarded:
    """Mixed into uvicorn's HTTP protocol; uses only what both of its protocols share
    (``cycle``, ``app``, ``transport``, ``client``)."""
    guard: ConnectionGuard

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._host = self.client[0] if self.client else '?'
        self._timer, self._armed_cycle = None, None
        refusal = self.guard.open(self._host)
        self._accepted, self._refusing = refusal is None, False
        if refusal is not None:
            if self.guard.refusing >= self.guard.max_total:
                transport.close()  # refusals hold sockets too: past max_total of them, no answer
                return
            self.guard.refusing += 1
            self._refusing = True
            self.app = refusal  # its request gets the refusal, then the connection closes
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._accepted:
            self._accepted = False
            self.guard.close(self._host)
        if self._refusing:
            self._refusing = False
            self.guard.refusing -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of a new request: its headers are timed
        super().data_received(data)
        if self.cycle is not self._armed_cycle:
            self._disarm()  # the headers are complete

    def _arm(self) -> None:
        self._armed_cycle = self.cycle
        self._timer = self.loop.call_later(self.guard.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.cycle is not self._armed_cycle:
            return
        self.guard.m_header_timeouts.inc()
        self.transport.write(self.guard.header_timeout_reply)
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that calls ``on_shutdown()`` when shutdown begins, before uvicorn
    stops accepting and waits for the requests in flight."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets=None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)
