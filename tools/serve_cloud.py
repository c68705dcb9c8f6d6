"""The cloud server: POST a raw edge payload, get detections back (FastAPI + uvicorn).

    ECC_SERVE_TOKEN=secret python tools/serve_cloud.py CONFIG CHECKPOINT [--port 8000]

CHECKPOINT is the full checkpoint or the ``cloud.pth`` of ``tools/export_edge_cloud.py``. The
token comes from ``--token-file``, ``ECC_SERVE_TOKEN_FILE`` or ``ECC_SERVE_TOKEN`` and is never
printed. ``--port 0`` picks a free port; ``--port-file`` writes the one chosen (for scripts and
tests). Batching, queue and size limits come from the config's ``serving`` dict
(``ecc_mmdet.serving.service.ServingConfig``) and ``--cfg-options serving.max_batch_size=1``.

Slow and vanishing clients: a request's headers must arrive within ``--header-timeout`` (5 s)
and its body within ``--body-timeout`` (10 s) of them, else 408 and the connection is closed; a
client address holds at most ``--max-connections-per-client`` (64) connections and all clients
``--max-connections`` (512): the request of one more gets 429 / 503 with ``Retry-After``. On
SIGTERM/SIGINT, requests whose bodies arrived are answered, uploads still arriving get
``--shutdown-grace`` (2 s) and then 408, and no request is answered 500. A client gone mid-body
is one INFO line and ``ecc_client_disconnects_total``. ``--metrics-token``: ``/metrics`` needs
the bearer token too (default: open, as ``/healthz``). Each flag sets the ``serving`` key of
the same meaning (``body_timeout_s``, ``header_timeout_s``, ``max_connections_per_client``,
``max_connections``, ``shutdown_grace_s``, ``metrics_require_token``).
``--adapt``: also serve online adaptation (``/v1/adapt/*``: edges register, upload selected
images, get PARAM_UPDATEs; ``ecc_mmdet.serving.adaptation_service``) of a dynamic split
detector's edge, with the full checkpoint. The teacher is ``--adapt-teacher-config`` /
``--adapt-teacher-checkpoint``, else the config's ``test_cfg`` or top-level ``teacher_config`` /
``teacher_checkpoint``; the ``CloudAdapter`` settings (and ``downlink_half``) are those of the
config's ``OnlineAdaptationLoop`` test loop, so ``tools/test.py`` with ``test_cfg.remote`` gives
the in-process numbers. ``--adapt-state-dir`` keeps every edge's state there (written atomically
after each change; a restarted server continues); ``--adapt-max-edges`` and
``--adapt-max-pending`` bound the edges and each edge's uploads waiting for a round (429).
For several processes behind a load balancer, see docs/deployment.md (``uvicorn --factory
ecc_mmdet.serving.app:app_from_env --workers N``); for a cluster, ``tools/serve_ray.py``.
"""
import argparse
import json
import logging
import os
import socket
import sys

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import add_checkpoint_args, main_guard
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
                   help='seconds to finish the requests whose bodies arrived, on '
                   'SIGTERM/SIGINT (what is left then is answered 503)')
    add_checkpoint_args(p)  # --allow-partial-checkpoint, --debug
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, e.g. serving.max_batch_size=1')
    a = p.add_argument_group('online adaptation')
    a.add_argument('--adapt', action='store_true', help='serve /v1/adapt/* (a dynamic split '
                   'detector, full checkpoint, a teacher)')
    a.add_argument('--adapt-teacher-config', help='the teacher\'s config (default: the '
                   'config\'s test_cfg / top-level teacher_config)')
    a.add_argument('--adapt-teacher-checkpoint', help='the teacher\'s checkpoint (default: '
                   'the config\'s teacher_checkpoint)')
    a.add_argument('--adapt-state-dir', help='keep the edges\' adaptation states here (a '
                   'restarted server continues); default: in memory only')
    a.add_argument('--adapt-max-edges', type=int, default=16, help='edges adapted at most [16]')
    a.add_argument('--adapt-max-pending', type=int, default=64,
                   help='uploads of one edge waiting for a round [64]')
    g = p.add_argument_group('slow and vanishing clients (default: the config\'s serving '
                             'keys, else the value in brackets)')
    for flag, key, kind, text in GUARD_FLAGS:
        g.add_argument(flag, type=kind, dest=key, metavar='N',
                       help=f'{text} [{getattr(_defaults(), key)}]')
    g.add_argument('--metrics-token', action='store_true', dest='metrics_require_token',
                   default=None, help='GET /metrics requires the bearer token')
    return p.parse_args(argv)


#: flag -> ServingConfig key it sets
GUARD_FLAGS = (
    ('--body-timeout', 'body_timeout_s', float,
     'seconds from the headers to the last byte of the body (else 408)'),
    ('--header-timeout', 'header_timeout_s', float,
     'seconds from a connection\'s opening (later: a request\'s first byte) to its last '
     'header (else 408)'),
    ('--max-connections-per-client', 'max_connections_per_client', int,
     'connections one client address may hold (one more: 429)'),
    ('--max-connections', 'max_connections', int,
     'connections all clients may hold (one more: 503)'),
    ('--shutdown-grace', 'shutdown_grace_s', float,
     'on SIGTERM, seconds uploads still arriving get before their 408'),
)


def _defaults():
    from ecc_mmdet.serving.service import ServingConfig
    return ServingConfig()


def serving_options(cfg, args) -> dict:
    """The config's ``serving`` dict with the flags given on top."""
    serving = dict(cfg.get('serving', None) or {})
    for key in [k for _, k, _, _ in GUARD_FLAGS] + ['metrics_require_token']:
        if getattr(args, key) is not None:
            serving[key] = getattr(args, key)
    return serving


def build_service(args):
    from ecc_mmdet.serving.app import read_token
    from ecc_mmdet.serving.runtime import CloudRuntime
    from ecc_mmdet.serving.service import CloudService, ServingConfig
    token = read_token(os.environ, args.token_file, allow_none=args.insecure_no_auth)
    if token is None and args.host not in ('127.0.0.1', 'localhost', '::1'):
        raise ConfigError('--insecure-no-auth is for loopback only; bind 127.0.0.1 or set a '
                          'token')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    serving = ServingConfig.from_dict(serving_options(cfg, args))
    if serving.metrics_require_token and token is None:
        raise ConfigError('--metrics-token needs a token: drop --insecure-no-auth')
    teacher = adapt_teacher(args, cfg) if args.adapt else None  # its errors first
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
                                          partial_checkpoint=args.allow_partial_checkpoint,
                                          max_input_side=serving.max_input_side)
    adaptation = build_adaptation(args, runtime, serving, *teacher) if args.adapt else None
    return CloudService(runtime, token, serving, report_sink=_jsonl_sink(args.reports_out),
                        adaptation=adaptation)


def adapt_teacher(args, cfg):
    """``--adapt``: (the config's OnlineAdaptationLoop settings, or {} for CloudAdapter's
    defaults; the teacher, built) -- a ConfigError or FileNotFoundError naming what is
    missing."""
    from ecc_mmdet.distillation import DetectionDistiller
    loop = dict(cfg.get('test_cfg', None) or {})
    if loop.get('type') != 'OnlineAdaptationLoop':
        loop = {}
    distiller = DetectionDistiller(
        teacher_config=args.adapt_teacher_config or loop.get('teacher_config'),
        teacher_checkpoint=args.adapt_teacher_checkpoint or loop.get('teacher_checkpoint'),
        owner='serve_cloud --adapt')
    return loop, distiller.build(device=args.device, cfg=cfg)


def build_adaptation(args, runtime, serving, loop: dict, distiller):
    """``--adapt``: an AdaptationService over a hub of the served model, the teacher and the
    loop's cloud settings, as ``OnlineAdaptationLoop`` builds them in process."""
    from ecc_mmdet.adaptation.cloud_state import AdaptationHub
    from ecc_mmdet.serving.adaptation_service import AdaptationService
    model = runtime.model
    if getattr(model, 'edge_exit', None) is None or getattr(model, 'router', None) is None:
        raise ConfigError('--adapt adapts the edge exit of a dynamic split detector (edge_exit '
                          '+ router, e.g. configs/ecc_faster_rcnn_r18_synthetic_cema.py): serve '
                          'such a config with its full checkpoint (not cloud.pth)')
    distiller.check_classes(model)
    # every cloud method's edge re-estimates its own statistics: updates carry the affine only
    hub = AdaptationHub(model, distiller, dict(loop.get('cloud') or {}),
                        state_dir=args.adapt_state_dir, max_edges=args.adapt_max_edges,
                        max_pending=args.adapt_max_pending, affine_only=True,
                        half=bool(loop.get('downlink_half', False)))
    return AdaptationService(hub, runtime.class_names, retry_after_s=serving.retry_after_s)


def _jsonl_sink(path):
    """Appends each report as one JSON line (opened now: a bad path fails before serving)."""
    if not path:
        return None
    out = open(path, 'a')

    def sink(report):
        out.write(json.dumps(report) + '\n')
        out.flush()
    return sink


def _banner(args, service, port: int) -> None:
    """What is served, with its limits (never the token)."""
    s = service.config
    auth = ('on (metrics too)' if s.metrics_require_token else 'on') if service._token else 'OFF'
    print(f'serving {args.config} on http://{args.host}:{port}/v1/detect (fingerprint '
          f'{service.runtime.fingerprint.hex()}, batch <= {s.max_batch_size}, wait '
          f'{s.max_wait_ms} ms, queue {s.max_queue}, body <= {s.max_body_bytes} B in '
          f'{s.body_timeout_s:g} s, headers in {s.header_timeout_s:g} s, connections <= '
          f'{s.max_connections_per_client}/client, {s.max_connections} in all, auth {auth})',
          flush=True)
    if service.adaptation is not None:
        hub = service.adaptation.hub
        print(f'adapting edges on /v1/adapt/* ({len(hub.edges)} restored from '
              f'{args.adapt_state_dir}; at most {hub.max_edges} edges)' if args.adapt_state_dir
              else f'adapting edges on /v1/adapt/* (state in memory; at most {hub.max_edges} '
              'edges)', flush=True)


@main_guard
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
    from ecc_mmdet.serving.app import serve
    log = logging.getLogger('ecc_mmdet.serving')  # disconnects and refusals, one line each
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    port = sock.getsockname()[1]
    if args.port_file:
        with open(args.port_file + '.tmp', 'w') as f:
            f.write(str(port))
        os.replace(args.port_file + '.tmp', args.port_file)
    _banner(args, service, port)
    serve(service, [sock], args.graceful_timeout)
    return 0


if __name__ == '__main__':
    sys.exit(main())
