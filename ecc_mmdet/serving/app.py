"""The cloud server's HTTP front end (FastAPI on uvicorn): routes only; the request handling is
:class:`~ecc_mmdet.serving.service.CloudService`'s.

Endpoints: ``POST /v1/detect`` (raw payload, ``application/octet-stream``), ``POST /v1/report``
(the detections report of an image finished on the edge), the online adaptation routes
``POST /v1/adapt/edges/{edge_id}``, ``POST /v1/adapt/upload``, ``POST /v1/adapt/round`` and
``GET /v1/adapt/update?after=N`` (:mod:`.adaptation_service`), ``GET /healthz``
(the process answers), ``GET /readyz`` (the model is loaded and the batcher runs; 503 while
shutting down), ``GET /metrics`` (Prometheus text format; with ``serving.metrics_require_token``
only for the bearer token, since it reveals the traffic).

:func:`serve` (``tools/serve_cloud.py``) runs it on uvicorn with the connection guard of
:mod:`.connections` (header timeout, connections per client and in total). On shutdown uvicorn
stops accepting, the service drains (uploads still arriving get ``shutdown_grace_s``, then 408),
requests whose bodies arrived are answered, and the lifespan hook then stops the batcher. A
request cancelled because uvicorn's graceful timeout ran out is answered 503 with
``Retry-After``, not uvicorn's 500.
"""
import asyncio
import contextlib
import logging
import os
from typing import Callable, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from ..apis.inference import load_config
from .runtime import CloudRuntime
from .service import CONTENT_TYPE, CloudService, Reply, ServingConfig

__all__ = ['ADAPT_ROUTES', 'create_app', 'serve']
logger = logging.getLogger('ecc_mmdet.serving')
#: (method, path, action of CloudService.adapt): the online adaptation routes
ADAPT_ROUTES = (('POST', '/v1/adapt/edges/{edge_id}', 'register'),
                ('POST', '/v1/adapt/upload', 'upload'), ('POST', '/v1/adapt/round', 'round'),
                ('GET', '/v1/adapt/update', 'update'))


def create_app(service: Union[CloudService, Callable[[], CloudService]]) -> FastAPI:
    """The FastAPI app around ``service`` (or a factory called once at startup, so a worker
    process builds its own model)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = service() if callable(service) and not isinstance(service, CloudService) \
            else service
        app.state.service = svc
        svc.start()
        yield
        await svc.stop()

    app = FastAPI(title='ecc_mmdet cloud', lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(AnswerCancelled)
    install_routes(app)
    return app


def serve(service: CloudService, sockets, graceful_timeout: float = 30.0) -> None:
    """Serve ``service`` on the bound, listening ``sockets`` until SIGTERM/SIGINT (blocking),
    with its config's header timeout, connection caps and shutdown drain."""
    import uvicorn

    from .connections import ConnectionGuard, DrainingServer
    c = service.config
    guard = ConnectionGuard(c.max_connections_per_client, c.max_connections, c.header_timeout_s,
                            c.retry_after_s, service.registry)
    config = uvicorn.Config(create_app(service), log_level='warning', access_log=False,
                            timeout_graceful_shutdown=graceful_timeout, http=guard.protocol())
    DrainingServer(config, service.begin_drain).run(sockets=sockets)


class AnswerCancelled:
    """ASGI middleware: a request cancelled before its answer (uvicorn's graceful timeout ran
    out) gets 503 with ``Retry-After`` instead of uvicorn's 500, so the client retries."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message['type'] == 'http.response.start'
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            logger.warning('%s cancelled at shutdown before its answer: 503', scope['path'])
            await JSONResponse(dict(error='ShuttingDown', detail='the server stopped before '
                                    'answering; retry'), status_code=503,
                               headers={'Retry-After': '1', 'Connection': 'close'})(
                                   scope, receive, send)


def install_routes(app: FastAPI) -> None:
    """The routes, reading the service from ``app.state.service`` (shared with Ray Serve)."""

    async def answer(request: Request, route: str, call) -> Response:
        svc: CloudService = request.app.state.service
        try:
            reply = await call(svc, headers_of(request), request.stream())
        except ClientDisconnect:  # nobody to answer
            client = request.client
            svc.client_disconnected(route, f'{client.host}:{client.port}' if client else '?')
            return Response(status_code=400)
        return as_response(reply)

    @app.post('/v1/detect')
    async def detect(request: Request):
        return await answer(request, 'detect', lambda svc, h, c: svc.detect(h, c))

    @app.post('/v1/report')
    async def report(request: Request):
        return await answer(request, 'report', lambda svc, h, c: svc.report(h, c))

    def adapt(action: str):
        async def route(request: Request):
            params = dict(request.query_params, **request.path_params)
            return await answer(request, f'adapt_{action}',
                                lambda svc, h, c: svc.adapt(action, h, c, params))
        return route

    for method, path, action in ADAPT_ROUTES:
        app.add_api_route(path, adapt(action), methods=[method], name=f'adapt_{action}')

    @app.get('/healthz')
    async def healthz():
        return {'status': 'ok'}

    @app.get('/readyz')
    async def readyz(request: Request):
        svc = getattr(request.app.state, 'service', None)
        ok = svc is not None and svc.ready
        return JSONResponse({'ready': bool(ok)}, status_code=200 if ok else 503)

    @app.get('/metrics')
    async def metrics(request: Request):
        svc: CloudService = request.app.state.service
        denied = svc.check_auth(headers_of(request)) if svc.config.metrics_require_token \
            else None
        if denied is not None:
            return as_response(denied)
        return Response(generate_latest(svc.registry), media_type=CONTENT_TYPE_LATEST)


def headers_of(request: Request) -> dict:
    """The request's headers with lower-case names (what the service expects)."""
    return {k.lower(): v for k, v in request.headers.items()}


def as_response(reply: Reply) -> Response:
    """JSON, a binary answer (a PARAM_UPDATE) or an empty one (204)."""
    if reply.body is None or isinstance(reply.body, bytes):
        return Response(reply.body, status_code=reply.status, headers=reply.headers,
                        media_type=None if reply.body is None else CONTENT_TYPE)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory ecc_mmdet.serving.app:app_from_env --workers N``:
    each worker builds its own model from ``ECC_SERVE_CONFIG`` / ``ECC_SERVE_CHECKPOINT`` and
    reads the token from ``ECC_SERVE_TOKEN`` or the file named by ``ECC_SERVE_TOKEN_FILE``."""

    def build():
        cfg = load_config(os.environ['ECC_SERVE_CONFIG'])
        serving = ServingConfig.from_dict(cfg.get('serving', None))
        runtime = CloudRuntime.from_files(cfg, os.environ['ECC_SERVE_CHECKPOINT'],
                                          max_input_side=serving.max_input_side)
        return CloudService(runtime, read_token(os.environ), serving)

    return create_app(build)


def read_token(env, token_file=None, allow_none: bool = False):
    """The bearer token: from ``token_file``, ``ECC_SERVE_TOKEN_FILE`` or ``ECC_SERVE_TOKEN``
    (in that order). Without one the server refuses to start unless ``allow_none``."""
    path = token_file or env.get('ECC_SERVE_TOKEN_FILE')
    if path:
        with open(path) as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f'token file {path} is empty')
        return token
    token = env.get('ECC_SERVE_TOKEN', '').strip()
    if token:
        return token
    if allow_none:
        return None
    raise ValueError('no bearer token: set ECC_SERVE_TOKEN or ECC_SERVE_TOKEN_FILE (or pass '
                     '--token-file); --insecure-no-auth serves without one')
