"""The cloud server: POST a raw edge payload, get detections back (FastAPI + uvicorn).

    ECC_SERVE_TOKEN=secret python tools/serve_cloud.py CONFIG CHECKPOINT [--port 8000]

CHECKPOINT is the full checkpoint or the ``cloud.pth`` of ``tools/export_edge_cloud.py``. The
token comes from ``--token-file``, ``ECC_SERVE_TOKEN_FILE`` or ``ECC_SERVE_TOKEN`` and is never
printed. ``--port 0`` picks a free port; ``--port-file`` writes the one chosen (for scripts and
tests). Batching, queue and size limits come from the config's ``serving`` dict
(``ecc_mmdet.serving.service.ServingConfig``) and ``--cfg-options serving.max_batch_size=1``.
For several processes behind a load balancer, see the README (``uvicorn --factory
ecc_mmdet.serving.app:app_from_env --workers N``); for a cluster, ``tools/serve_ray.py``.
"""
import argparse
import json
import os
import socket
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from mmengine.config import DictAction

from ecc_mmdet.apis.inference import load_config
from ecc_mmdet.utils import ConfigError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a split (EdgeCloud*) detector config')
    p.add_argument('checkpoint', help='its full checkpoint, or cloud.pth of export_edge_cloud')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default: loopback)')
    p.add_argument('--port', type=int, default=8000, help='0 = any free port')
    p.add_argument('--port-file', help='write the bound port here once listening')
    p.add_argument('--token-file', help='file holding the bearer token')
    p.add_argument('--insecure-no-auth', action='store_true',
                   help='serve without authentication (experiments on loopback only)')
    p.add_argument('--data-root', help='dataset root with the calibration split (dynamic '
                   'models with calibrate_scores or a target offload ratio need it)')
    p.add_argument('--reports-out', help='append the accepted detections reports of '
                   'edge-finished images (POST /v1/report) to this JSON-lines file')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
    p.add_argument('--device', default='cpu')
    p.add_argument('--graceful-timeout', type=float, default=30.0,
                   help='seconds to finish in-flight requests on SIGTERM/SIGINT')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. serving.max_batch_size=1')
    return p.parse_args(argv)


def build_service(args):
    from ecc_mmdet.serving.app import read_token
    from ecc_mmdet.serving.runtime import CloudRuntime
    from ecc_mmdet.serving.service import CloudService, ServingConfig
    token = read_token(os.environ, args.token_file, allow_none=args.insecure_no_auth)
    if token is None and args.host not in ('127.0.0.1', 'localhost', '::1'):
        raise ConfigError('--insecure-no-auth is for loopback only; bind 127.0.0.1 or set a '
                          'token')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    serving = ServingConfig.from_dict(cfg.get('serving', None))
    from ecc_tools.dynamic import calibrated_if_dynamic
    # the cloud's score maps come from the calibration split, fitted at startup
    calibrated = calibrated_if_dynamic(args.config, args.checkpoint, args.data_root,
                                       'at startup; the edge calibrates on the same images')
    if calibrated is not None:
        from ecc_mmdet.serving.runtime import class_names_of
        model = calibrated[0]
        runtime = CloudRuntime(model.to(args.device), class_names_of(cfg),
                               max_input_side=serving.max_input_side)
    else:
        runtime = CloudRuntime.from_files(cfg, args.checkpoint, device=args.device,
                                          max_input_side=serving.max_input_side)
    return CloudService(runtime, token, serving, report_sink=_jsonl_sink(args.reports_out))


def _jsonl_sink(path):
    """Appends each report as one JSON line (opened now: a bad path fails before serving)."""
    if not path:
        return None
    out = open(path, 'a')

    def sink(report):
        out.write(json.dumps(report) + '\n')
        out.flush()
    return sink


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        service = build_service(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    import uvicorn

    from ecc_mmdet.serving.app import create_app
    family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level='warning', access_log=False,
                            timeout_graceful_shutdown=args.graceful_timeout)
    server = uvicorn.Server(config)
    if args.port_file:
        with open(args.port_file + '.tmp', 'w') as f:
            f.write(str(port))
        os.replace(args.port_file + '.tmp', args.port_file)
    s = service.config
    print(f'serving {args.config} on http://{args.host}:{port}/v1/detect (fingerprint '
          f'{service.runtime.fingerprint.hex()}, batch <= {s.max_batch_size}, wait '
          f'{s.max_wait_ms} ms, queue {s.max_queue}, body <= {s.max_body_bytes} B, auth '
          f'{"on" if service._token else "OFF"})', flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == '__main__':
    sys.exit(main())
