"""The cloud service as a Ray Serve deployment: Ray routes requests over replicas, scales them
(``autoscaling_config``) and replaces dead ones; the request handling stays
:class:`~ecc_mmdet.serving.service.CloudService`'s.

Each replica builds its own model and service in its constructor and serves the routes of
:mod:`.app` (``install_routes``) through ``@serve.ingress`` with a FastAPI app made per replica,
so status codes, limits and metrics are the uvicorn server's. The app's lifespan starts the
batcher: Ray runs it on the replica's user-code event loop, the one that serves the requests.
What differs behind Ray's HTTP proxy:

- every response names the replica that answered (``X-Ecc-Replica``);
- ``/metrics`` and the idempotency cache are per replica: a scrape through the proxy sees one
  replica, and a retry with the same ``Idempotency-Key`` is answered from the cache only when Ray
  routes it to the replica that answered first (otherwise it is computed again: answered once,
  computed twice);
- Ray's proxy gives every request an ``X-Request-ID`` of its own, which is why the service keys
  its cache on ``Idempotency-Key`` instead.

The token never enters the deployment's options, which Ray records and prints: replicas read it
from a token file (on every node), from their own environment (``ECC_SERVE_TOKEN[_FILE]``), or
get it as a :class:`Secret`, whose repr hides it.
"""
import contextlib
import hmac
import os
import os.path as osp
from typing import Dict, Mapping, Optional

from fastapi import FastAPI

from ..apis.inference import load_config
from ..errors import ConfigError
from .app import install_routes, read_token
from .runtime import CloudRuntime
from .service import CloudService, ServingConfig

__all__ = ['CloudReplica', 'DEFAULT_RAY_OPTIONS', 'RAY_OPTION_KEYS', 'REPLICA_HEADER', 'Secret',
           'build_ray_app', 'deployment_options']

#: what ``serving.ray`` may set (passed to ``serve.deployment``)
RAY_OPTION_KEYS = ('num_replicas', 'autoscaling_config', 'ray_actor_options',
                   'max_ongoing_requests', 'max_queued_requests', 'max_replicas_per_node',
                   'graceful_shutdown_timeout_s', 'graceful_shutdown_wait_loop_s',
                   'health_check_period_s', 'health_check_timeout_s')
#: without ``autoscaling_config``: two replicas of half a CPU each
DEFAULT_RAY_OPTIONS = dict(num_replicas=2, ray_actor_options=dict(num_cpus=0.5))
REPLICA_HEADER = 'X-Ecc-Replica'


class Secret:
    """A value Ray may pickle but must not print (its repr hides it)."""
    __slots__ = ('_value', )

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return 'Secret(***)'

    __str__ = __repr__

    def __eq__(self, other) -> bool:  # Ray compares bound arguments between deploys
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode())

    def __reduce__(self):
        return Secret, (self._value, )


def deployment_options(ray_options: Optional[Mapping] = None,
                       serving: ServingConfig = ServingConfig()) -> Dict:
    """``serve.deployment`` options from a config's ``serving.ray`` dict over the defaults.

    ``max_ongoing_requests`` defaults to two batches (``2 * serving.max_batch_size``; Ray's own
    default of 5 would cap the dynamic batches); ``num_replicas`` to 2 unless autoscaling.
    """
    opts = dict(ray_options or {})
    unknown = sorted(set(opts) - set(RAY_OPTION_KEYS))
    if unknown:
        raise ValueError(f'unknown serving.ray option(s) {unknown}; known: '
                         f'{", ".join(RAY_OPTION_KEYS)}')
    actor = dict(DEFAULT_RAY_OPTIONS['ray_actor_options'])
    actor.update(opts.pop('ray_actor_options', None) or {})
    if 'ECC_SERVE_TOKEN' in ((actor.get('runtime_env') or {}).get('env_vars') or {}):
        raise ValueError('ray_actor_options.runtime_env must not carry ECC_SERVE_TOKEN: Ray '
                         'records and shows it; use a token file')
    out = dict(max_ongoing_requests=2 * serving.max_batch_size)
    if 'autoscaling_config' not in opts:
        out['num_replicas'] = DEFAULT_RAY_OPTIONS['num_replicas']
    out.update(opts)
    out['ray_actor_options'] = actor
    return out


class _ReplicaHeader:
    """ASGI middleware: names the replica in every HTTP response."""

    def __init__(self, app, value: str):
        self.app, self.header = app, (REPLICA_HEADER.lower().encode(), value.encode())

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)

        async def send_named(message):
            if message['type'] == 'http.response.start':
                message['headers'] = [*message.get('headers', ()), self.header]
            await send(message)

        await self.app(scope, receive, send_named)


class CloudReplica:
    """One replica: its own model and :class:`CloudService` (the deployment class, before
    ``serve.ingress``/``serve.deployment`` wrap it in :func:`build_ray_app`).

    Args:
        config: the (merged) mmengine config, or its path.
        checkpoint: the full checkpoint or ``cloud.pth``; must exist on the replica's node.
        token: a :class:`Secret`; else ``token_file``; else the replica's environment.
        insecure_no_auth: serve without a token when none is found.
    """

    def __init__(self, config, checkpoint: str, token: Optional[Secret] = None,
                 token_file: Optional[str] = None, insecure_no_auth: bool = False,
                 device: str = 'cpu'):
        from ray import serve
        if token is not None and not isinstance(token, Secret):
            raise TypeError('pass the token as a Secret (its repr hides it)')
        cfg = load_config(config)
        serving = ServingConfig.from_dict(cfg.get('serving', None))
        secret = token.reveal() if token is not None else read_token(
            os.environ, token_file, allow_none=insecure_no_auth)
        runtime = CloudRuntime.from_files(cfg, checkpoint, device=device,
                                          max_input_side=serving.max_input_side)
        self.service = CloudService(runtime, secret, serving)
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self):
        """Ray calls this after the constructor, on the replica's event loop."""
        service = self.service

        @contextlib.asynccontextmanager
        async def lifespan(app):
            service.start()
            yield
            await service.stop()

        app = FastAPI(title='ecc_mmdet cloud (Ray Serve)', lifespan=lifespan, docs_url=None,
                      redoc_url=None, openapi_url=None)
        app.state.service = service
        install_routes(app)
        app.add_middleware(_ReplicaHeader, value=self.replica_id)
        return app

    async def check_health(self):
        """Ray's health check: a replica whose batcher died is replaced."""
        if not self.service.shutting_down and not self.service.batcher.running:
            raise RuntimeError('the batcher is not running')


def build_ray_app(config, checkpoint: str, token: Optional[str] = None,
                  token_file: Optional[str] = None, ray_options: Optional[Mapping] = None, *,
                  insecure_no_auth: bool = False, device: str = 'cpu', name: str = 'EccCloud'):
    """The cloud service as a bound Ray Serve application (for ``serve.run``).

    Args:
        config: a split detector's config (path or mmengine ``Config``, ``--cfg-options``
            merged); its ``serving`` dict sets the service, ``serving.ray`` the deployment.
        checkpoint: the full checkpoint or ``cloud.pth``; config and checkpoint paths must be
            readable on every node that runs a replica.
        token: the bearer token (sent to the replicas as a :class:`Secret`); or
        token_file: a file holding it, read by each replica; with neither, each replica reads
            ``ECC_SERVE_TOKEN_FILE``/``ECC_SERVE_TOKEN`` from its environment (a local Ray
            instance's workers inherit the driver's).
        ray_options: override ``serving.ray`` key by key (see :data:`RAY_OPTION_KEYS`).
        insecure_no_auth: allow serving without a token (loopback experiments).
    """
    from ray import serve
    if token is not None and token_file is not None:
        raise ValueError('pass token or token_file, not both')
    cfg = load_config(config)
    serving_dict = dict(cfg.get('serving', None) or {})
    serving = ServingConfig.from_dict(serving_dict)
    opts = deployment_options({**(serving_dict.get('ray') or {}), **(ray_options or {})},
                              serving)
    if not osp.isfile(checkpoint):
        raise ConfigError(f'Checkpoint not found: {checkpoint}')
    if token_file is not None:
        token_file = osp.abspath(token_file)
    deployment = serve.deployment(serve.ingress()(CloudReplica), name=name, **opts)
    return deployment.bind(cfg, osp.abspath(checkpoint),
                           token=None if token is None else Secret(token),
                           token_file=token_file, insecure_no_auth=insecure_no_auth,
                           device=device)
