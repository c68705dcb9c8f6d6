"""The cloud server on Ray Serve: the service of ``tools/serve_cloud.py`` as replicas behind
Ray's HTTP proxy, which routes, scales (``serving.ray.autoscaling_config``) and restarts them.

    ECC_SERVE_TOKEN=secret python tools/serve_ray.py CONFIG CHECKPOINT [--num-replicas 2]

Starts a local Ray instance (or joins a cluster with ``--address``; config and checkpoint must
then be readable on every node), deploys :mod:`ecc_mmdet.serving.ray_deployment` with the
config's ``serving.ray`` options, waits until the replicas answer, writes ``--port-file`` and
serves until SIGTERM/SIGINT; then it shuts Serve and the local instance down (with
``--address`` it deletes only its own application). The token comes from ``--token-file``,
``ECC_SERVE_TOKEN_FILE`` or ``ECC_SERVE_TOKEN``; it is never printed nor put into the options
Ray records. Ray's proxy needs a concrete port (given 0 it binds one and reports 0), so
``--port 0`` picks a free one first. Joining a cluster whose Serve already runs keeps that
Serve's host and port. Exit status 2: a bad config or token setup; 3: Ray cannot start.
"""
import argparse
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from mmengine.config import DictAction

from ecc_mmdet.apis.inference import load_config
from ecc_mmdet.utils import ConfigError

APP_NAME = 'ecc_cloud'
LOOPBACK = ('127.0.0.1', 'localhost', '::1')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a split (EdgeCloud*) detector config')
    p.add_argument('checkpoint', help='its full checkpoint, or cloud.pth of export_edge_cloud')
    p.add_argument('--host', default='127.0.0.1', help='address of Ray\'s HTTP proxy '
                   '(default: loopback)')
    p.add_argument('--port', type=int, default=8000, help='0 = any free port')
    p.add_argument('--port-file', help='write the port here once the replicas answer')
    p.add_argument('--token-file', help='file holding the bearer token (read by each replica)')
    p.add_argument('--insecure-no-auth', action='store_true',
                   help='serve without authentication (experiments on loopback only)')
    p.add_argument('--num-replicas', type=int, default=None,
                   help='fixed number of replicas (overrides serving.ray, autoscaling included)')
    p.add_argument('--address', default=None,
                   help='join this Ray cluster instead of starting a local instance')
    p.add_argument('--num-cpus', type=float, default=None,
                   help='CPUs of the local Ray instance (default: all)')
    p.add_argument('--ready-timeout', type=float, default=300.0,
                   help='seconds to wait for the replicas to answer')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. serving.ray.num_replicas=4')
    return p.parse_args(argv)


def build_app(args):
    """-> (bound Ray Serve application, summary line); no Ray needed yet."""
    from ecc_mmdet.serving.app import read_token
    from ecc_mmdet.serving.ray_deployment import build_ray_app, deployment_options
    from ecc_mmdet.serving.service import ServingConfig
    token = read_token(os.environ, args.token_file, allow_none=args.insecure_no_auth)
    if token is None and args.host not in LOOPBACK:
        raise ConfigError('--insecure-no-auth is for loopback only; bind 127.0.0.1 or set a '
                          'token')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    if args.num_replicas is not None:
        if args.num_replicas < 1:
            raise ValueError('--num-replicas must be >= 1')
        serving = dict(cfg.get('serving', None) or {})
        ray_opts = dict(serving.get('ray') or {}, num_replicas=args.num_replicas)
        ray_opts.pop('autoscaling_config', None)
        cfg['serving'] = dict(serving, ray=ray_opts)
    # a token file is read by each replica; a token from the environment travels as a Secret
    token_file = args.token_file or os.environ.get('ECC_SERVE_TOKEN_FILE') or None
    app = build_ray_app(cfg, args.checkpoint, token=None if token_file else token,
                        token_file=token_file, insecure_no_auth=token is None)
    serving = cfg.get('serving', None) or {}
    opts = deployment_options(serving.get('ray'), ServingConfig.from_dict(serving))
    auto = opts.get('autoscaling_config')
    scale = (f'autoscaling {auto.get("min_replicas", 1)}-{auto.get("max_replicas", 1)}'
             if isinstance(auto, dict) else f'{opts["num_replicas"]} replicas')
    return app, f'{scale}, auth {"on" if token else "OFF"}'


def free_port(host: str) -> int:
    """A port free now (Ray's proxy cannot bind port 0 and report it)."""
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + '/readyz', timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f'{url}/readyz did not answer 200 within {timeout:.0f} s')
        time.sleep(0.3)


def main(argv=None):
    args = parse_args(argv)
    try:
        app, summary = build_app(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    import ray
    from ray import serve
    port = args.port or free_port(args.host)
    try:
        ctx = ray.init(address=args.address) if args.address else \
            ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    except Exception as e:  # noqa: BLE001  (whatever Ray raises: no instance, no server)
        print(f'error: Ray cannot start: {type(e).__name__}: {e}', file=sys.stderr)
        return 3
    stop, serving = threading.Event(), threading.Event()

    def on_signal(*_):  # replaces ray.init's SIGTERM handler
        if not serving.is_set():
            raise KeyboardInterrupt  # abort the start; the finally below cleans up
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        try:
            serve.start(http_options=dict(host=args.host, port=port))
            serve.run(app, name=APP_NAME, route_prefix='/')
            host = '127.0.0.1' if args.host in ('0.0.0.0', '') else '[::1]' \
                if args.host == '::' else f'[{args.host}]' if ':' in args.host else args.host
            url = f'http://{host}:{port}'
            wait_ready(url, args.ready_timeout)
        except KeyboardInterrupt:
            print('interrupted while starting', file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001  (a failed deploy: Ray's message says why)
            print(f'error: the deployment did not start: {type(e).__name__}: {e}',
                  file=sys.stderr)
            return 1
        if args.port_file:
            with open(args.port_file + '.tmp', 'w') as f:
                f.write(str(port))
            os.replace(args.port_file + '.tmp', args.port_file)
        print(f'serving {args.config} on {url}/v1/detect through Ray Serve ({summary}; '
              f'Ray at {ctx.address_info["gcs_address"]})', flush=True)
        serving.set()
        while not stop.wait(1.0):
            pass
        print('stopping', flush=True)
    finally:
        if args.address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
