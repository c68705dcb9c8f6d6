"""Shared by the serving tests: a split detector saved as config + checkpoint (the
``served_model`` fixture: import it into the test module), and a real cloud server subprocess
on loopback (``cloud_server``).

Not a conftest.py: a second module named ``conftest`` would shadow ``tests/conftest.py`` (the
test folders are not packages), so test modules import from here explicitly.
"""
import contextlib
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SPLIT_CFG = osp.join(REPO, 'configs', 'ecc_faster_rcnn_r18_synthetic.py')
TOKEN = 'test-token-5f3a'


@pytest.fixture(scope='session')
def served_model(tiny_coco, tmp_path_factory):
    """A seeded, untrained split detector (entropy bottleneck, coding tables built) as files:
    dict(config, checkpoint, data_root). Untrained weights still give many boxes per image."""
    import torch
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import build_detector, load_config
    d = tmp_path_factory.mktemp('served')
    cfg = load_config(SPLIT_CFG, data_root=tiny_coco)
    config = str(d / 'config.py')
    cfg.dump(config)
    torch.manual_seed(0)
    model = build_detector(cfg.model)  # eval mode: the coding tables are built
    checkpoint = str(d / 'model.pth')
    save_checkpoint({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return dict(config=config, checkpoint=checkpoint, data_root=tiny_coco)


def wait_ready(url: str, proc, timeout: float = 180.0) -> None:
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f'server exited with {proc.returncode}:\n'
                                 f'{proc.stdout.read()[-3000:]}')
        try:
            if httpx.get(url + '/readyz', timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f'server at {url} not ready after {timeout} s')


@contextlib.contextmanager
def cloud_server(files, tmp_path, *extra, token=TOKEN, env=None):
    """``tools/serve_cloud.py`` in a subprocess on 127.0.0.1 (a free port) -> yields
    (base url, Popen). Stopped with SIGTERM (graceful) on exit."""
    port_file = str(tmp_path / f'port-{time.monotonic_ns()}')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))
    env.pop('ECC_SERVE_TOKEN', None)
    args = [sys.executable, osp.join(REPO, 'tools', 'serve_cloud.py'), files['config'],
            files['checkpoint'], '--port', '0', '--port-file', port_file, '--threads', '1',
            *map(str, extra)]
    if token is not None:
        env['ECC_SERVE_TOKEN'] = token
    else:
        args.append('--insecure-no-auth')
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while not osp.exists(port_file):
            if proc.poll() is not None or time.time() - t0 > 180:
                proc.kill()
                raise AssertionError(f'server did not start:\n{proc.stdout.read()[-3000:]}')
            time.sleep(0.2)
        url = f'http://127.0.0.1:{open(port_file).read().strip()}'
        wait_ready(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
