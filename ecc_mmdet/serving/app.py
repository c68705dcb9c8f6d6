"""The cloud server's HTTP front end (FastAPI on uvicorn): routes only; the request handling is
:class:`~ecc_mmdet.serving.service.CloudService`'s.

Endpoints: ``POST /v1/detect`` (raw payload, ``application/octet-stream``), ``POST /v1/report``
(the detections report of an image finished on the edge), ``GET /healthz``
(the process answers), ``GET /readyz`` (the model is loaded and the batcher runs; 503 while
shutting down), ``GET /metrics`` (Prometheus text format). On shutdown uvicorn stops accepting
connections and waits for the requests in flight; the lifespan hook then drains the batcher.
"""
import contextlib
import os
from typing import Callable, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..apis.inference import load_config
from .runtime import CloudRuntime
from .service import CloudService, ServingConfig

__all__ = ['create_app']


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
    install_routes(app)
    return app


def install_routes(app: FastAPI) -> None:
    """The routes, reading the service from ``app.state.service`` (shared with Ray Serve)."""

    async def answer(request: Request, handler: str) -> JSONResponse:
        svc: CloudService = request.app.state.service
        reply = await getattr(svc, handler)({k.lower(): v for k, v in request.headers.items()},
                                            request.stream())
        return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    @app.post('/v1/detect')
    async def detect(request: Request):
        return await answer(request, 'detect')

    @app.post('/v1/report')
    async def report(request: Request):
        return await answer(request, 'report')

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
        return Response(generate_latest(svc.registry), media_type=CONTENT_TYPE_LATEST)


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
