"""The cloud service on Ray Serve (``ecc_mmdet.serving.ray_deployment``, ``tools/serve_ray.py``):
options and token handling without Ray running, then one local Ray instance for the module,
started by the tool in a subprocess with two replicas and answered through Ray's HTTP proxy on
loopback.

A subprocess keeps Ray's processes, threads and signal handlers out of the test process, and
every wait stays bounded (timeouts on the start, each request, the status query and the
shutdown).

The Ray tests skip, with the reason shown by ``pytest -rs``, in one case only: the machine
cannot host a local Ray instance -- ``tools/serve_ray.py`` exits with 3 ("Ray cannot start")
and Ray's error is one of :data:`RAY_HOST_FAILURES` (its GCS server process cannot start, as in
sandboxes without local sockets or subprocesses, or there is too little memory for its object
store). Any other failure of the tool, Ray's other start errors included, fails the tests.

Ray's own cluster authentication: Ray 2.60 turns token authentication on for each new local
instance and, lacking a token, writes one to ``~/.ray/auth_token`` for every later instance of
the user. The instance listens on the node's address, not only on loopback, so the test keeps
authentication on (``RAY_AUTH_MODE=token``) with a throwaway token in the environment
(``RAY_AUTH_TOKEN``): nothing is written to or read from the home directory.
"""
import importlib.util
import json
import os
import os.path as osp
import re
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

from conftest import REPO
from serving_utils import TOKEN

AUTH = {'Authorization': f'Bearer {TOKEN}', 'Content-Type': 'application/octet-stream'}
APP = 'ecc_cloud'
START_TIMEOUT = 240  # seconds for Ray + two replicas (about 30 on 2 cores)
# a second, short-lived Ray driver: reads serve.status() of the tool's instance
STATUS_SCRIPT = r'''
import json, sys
import ray
from ray import serve
ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')
app = serve.status().applications[sys.argv[2]]
v = lambda s: getattr(s, 'value', s)
print('STATUS ' + json.dumps(dict(status=v(app.status), deployments={
    name: dict(status=v(d.status), replicas={v(k): n for k, n in d.replica_states.items()})
    for name, d in app.deployments.items()})))
ray.shutdown()
'''


# ray.init's errors when the host cannot run a local instance (ray/_private/node.py, services.py)
RAY_HOST_FAILURES = ('Failed to start GCS', 'object store memory')


def ray_host_failure(returncode, log):
    """The skip reason when the tool's exit says the host cannot run Ray, else None."""
    if returncode != 3 or 'Ray cannot start' not in log:
        return None
    line = log[log.index('Ray cannot start'):].splitlines()[0]
    return line if any(f in line for f in RAY_HOST_FAILURES) else None


def ray_env(**extra):
    env = dict(os.environ, RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED='0', OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **extra)
    for k in ('RAY_AUTH_TOKEN_PATH', 'RAY_ADDRESS', 'ECC_SERVE_TOKEN_FILE'):
        env.pop(k, None)
    return env


def post(url, data, headers=AUTH):
    return httpx.post(url + '/v1/detect', content=data, headers=headers, timeout=60)


# ------------------------------------------------------------------ without Ray running
def test_ray_options_defaults_and_refusals():
    from ecc_mmdet.serving.ray_deployment import RAY_OPTION_KEYS, deployment_options
    from ecc_mmdet.serving.service import ServingConfig
    assert deployment_options() == dict(num_replicas=2, max_ongoing_requests=16,
                                        ray_actor_options=dict(num_cpus=0.5))
    auto = dict(min_replicas=1, max_replicas=4, target_ongoing_requests=2)
    opts = deployment_options(dict(autoscaling_config=auto, ray_actor_options=dict(memory=1e9)),
                              ServingConfig(max_batch_size=4))
    assert opts == dict(autoscaling_config=auto, max_ongoing_requests=8,
                        ray_actor_options=dict(num_cpus=0.5, memory=1e9))
    with pytest.raises(ValueError) as e:
        deployment_options(dict(num_replica=3))
    assert "['num_replica']" in str(e.value) and ', '.join(RAY_OPTION_KEYS) in str(e.value)
    with pytest.raises(ValueError, match='ECC_SERVE_TOKEN'):
        deployment_options(dict(ray_actor_options=dict(
            runtime_env=dict(env_vars=dict(ECC_SERVE_TOKEN=TOKEN)))))


def test_the_token_stays_out_of_what_ray_records(served_model, tmp_path):
    import ray.cloudpickle as cloudpickle

    from ecc_mmdet.serving.ray_deployment import Secret, build_ray_app
    files = served_model
    app = build_ray_app(files['config'], files['checkpoint'], token=TOKEN,
                        ray_options=dict(num_replicas=3))
    d = app._bound_deployment
    shown = ' '.join(map(repr, (d, d.init_args, d.init_kwargs, d.ray_actor_options,
                                d._deployment_config)))
    assert TOKEN not in shown and 'Secret(***)' in shown
    assert d._deployment_config.num_replicas == 3
    secret = cloudpickle.loads(cloudpickle.dumps(d.init_kwargs['token']))
    assert isinstance(secret, Secret) and secret.reveal() == TOKEN
    # a token file travels as its path, read by each replica
    (tmp_path / 'tok').write_text(TOKEN)
    d = build_ray_app(files['config'], files['checkpoint'],
                      token_file=str(tmp_path / 'tok'))._bound_deployment
    assert d.init_kwargs['token'] is None and d.init_kwargs['token_file'] == str(tmp_path / 'tok')
    with pytest.raises(ValueError, match='not both'):
        build_ray_app(files['config'], files['checkpoint'], token=TOKEN, token_file='x')
    with pytest.raises(ValueError, match='known: num_replicas'):
        build_ray_app(files['config'], files['checkpoint'], ray_options=dict(replicas=2))


def test_the_tool_refuses_bad_setups_before_starting_ray(served_model, monkeypatch, capsys):
    monkeypatch.syspath_prepend(osp.join(REPO, 'tools'))
    spec = importlib.util.spec_from_file_location('serve_ray_tool',
                                                  osp.join(REPO, 'tools', 'serve_ray.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    files = (served_model['config'], served_model['checkpoint'])
    monkeypatch.delenv('ECC_SERVE_TOKEN', raising=False)
    monkeypatch.delenv('ECC_SERVE_TOKEN_FILE', raising=False)
    assert tool.main([*files]) == 2
    assert 'no bearer token' in capsys.readouterr().err
    assert tool.main([*files, '--insecure-no-auth', '--host', '0.0.0.0']) == 2
    assert 'loopback only' in capsys.readouterr().err
    monkeypatch.setenv('ECC_SERVE_TOKEN', TOKEN)
    assert tool.main([*files, '--cfg-options', 'serving.ray.replicas=2']) == 2
    err = capsys.readouterr().err
    assert 'known: num_replicas' in err and TOKEN not in err
    assert 'ray' not in sys.modules or not __import__('ray').is_initialized()


def test_only_the_documented_host_failures_skip():
    gcs = ('error: Ray cannot start: RuntimeError: Failed to start GCS.  Last 0 lines of error '
           'files:\n')
    assert ray_host_failure(3, 'starting\n' + gcs) == gcs.splitlines()[0][len('error: '):]
    assert ray_host_failure(3, 'error: Ray cannot start: ValueError: The requested object store '
                               'memory size is greater than the total available memory.')
    for code, log in ((3, 'error: Ray cannot start: TypeError: init() got an unexpected keyword'),
                      (3, 'error: Ray cannot start: ConnectionError: no instance at 1.2.3.4'),
                      (1, gcs),  # the tool crashed after the start: a failure
                      (2, 'error: no bearer token')):
        assert ray_host_failure(code, log) is None, log


# ------------------------------------------------------------------ one Ray instance
@pytest.fixture(scope='module')
def ray_server(served_model, tmp_path_factory):
    """``tools/serve_ray.py`` with two replicas on 127.0.0.1 -> dict(url, proc, log, env,
    gcs). Stopped with SIGTERM at the end (or by the last test)."""
    d = tmp_path_factory.mktemp('ray')
    port_file, log_path = str(d / 'port'), str(d / 'serve_ray.log')
    env = ray_env(ECC_SERVE_TOKEN=TOKEN)
    args = [sys.executable, osp.join(REPO, 'tools', 'serve_ray.py'), served_model['config'],
            served_model['checkpoint'], '--port', '0', '--port-file', port_file,
            '--num-replicas', '2', '--num-cpus', '2', '--ready-timeout', str(START_TIMEOUT)]
    with open(log_path, 'w') as log:  # a file, not a pipe: Ray logs every request
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    read_log = lambda: open(log_path).read()  # noqa: E731
    try:
        t0 = time.monotonic()
        while not osp.exists(port_file):
            if proc.poll() is not None:
                out = read_log()
                reason = ray_host_failure(proc.returncode, out)
                if reason:
                    pytest.skip(f'this machine cannot host Ray: {reason}')
                raise AssertionError(f'serve_ray.py exited with {proc.returncode}:\n'
                                     f'{out[-4000:]}')
            if time.monotonic() - t0 > START_TIMEOUT:
                raise AssertionError(f'serve_ray.py not ready in {START_TIMEOUT} s:\n'
                                     f'{read_log()[-4000:]}')
            time.sleep(0.3)
        url = f'http://127.0.0.1:{open(port_file).read().strip()}'
        gcs = re.search(r'Ray at (\S+?)\)', read_log()).group(1)
        yield dict(url=url, proc=proc, log=read_log, env=env, gcs=gcs,
                   start_s=time.monotonic() - t0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the tool and the Ray it started
                proc.wait()


def test_round_trip_through_ray_equals_in_process_decode(ray_server, served_detector,
                                                         served_payloads):
    ref = served_detector.decode_and_predict(served_payloads)
    for payload, r in zip(served_payloads, ref):
        resp = post(ray_server['url'], payload)
        assert resp.status_code == 200, resp.text
        body, inst = resp.json(), r.pred_instances
        assert len(body['detections']) == len(inst) > 0
        torch.testing.assert_close(torch.tensor([d['bbox'] for d in body['detections']]),
                                   inst.bboxes.float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor([d['score'] for d in body['detections']]),
                                   inst.scores.float(), atol=1e-5, rtol=0)
        assert [d['label'] for d in body['detections']] == inst.labels.tolist()
        assert body['image_size'] == [128, 128] and body['bytes'] == len(payload)


def test_refusals_through_ray_and_the_deployment_keeps_serving(ray_server, served_payloads):
    from ecc_edge.codecs import bitstream
    url, good = ray_server['url'], served_payloads[0]
    cases = [
        (good, {'Authorization': None}, 401, 'Unauthorized'),
        (good, {'Authorization': 'Bearer wrong'}, 403, 'Forbidden'),
        (good[:20] + bytes([good[20] ^ 1]) + good[21:], {}, 400, 'CorruptedBitstreamError'),
        (good[:-3], {}, 400, 'TruncatedBitstreamError'),
    ]
    for data, extra, status, error in cases:
        headers = {k: v for k, v in {**AUTH, **extra}.items() if v is not None}
        resp = post(url, data, headers=headers)
        assert resp.status_code == status, (error, resp.text)
        assert resp.json()['error'] == error
        if status == 400:
            assert issubclass(getattr(bitstream, error), bitstream.BitstreamError)
        if status == 401:
            assert resp.headers['www-authenticate'] == 'Bearer'
        assert post(url, good).status_code == 200  # still serving
    assert ray_server['proc'].poll() is None


def test_two_replicas_run_and_both_answer(ray_server):
    out = subprocess.run([sys.executable, '-c', STATUS_SCRIPT, ray_server['gcs'], APP],
                         env=ray_server['env'], capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith('STATUS ')]
    assert out.returncode == 0 and line, out.stdout[-2000:] + out.stderr[-3000:]
    status = json.loads(line[0][len('STATUS '):])
    assert status['status'] == 'RUNNING'
    assert status['deployments']['EccCloud'] == dict(status='HEALTHY',
                                                     replicas={'RUNNING': 2})
    # each response names its replica; Ray's router spreads requests over both
    seen = set()
    for _ in range(30):
        resp = httpx.get(ray_server['url'] + '/healthz', timeout=30)
        assert resp.status_code == 200
        assert resp.headers['x-request-id']  # Ray's proxy gives every request an id
        seen.add(resp.headers['x-ecc-replica'])
        if len(seen) == 2:
            break
    assert len(seen) == 2, seen


def test_sigterm_shuts_serve_and_ray_down(ray_server):
    proc = ray_server['proc']
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    log = ray_server['log']()
    assert 'stopping' in log and TOKEN not in log
    with pytest.raises(httpx.HTTPError):
        httpx.get(ray_server['url'] + '/healthz', timeout=5)
