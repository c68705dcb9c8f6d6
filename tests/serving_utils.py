"""Shared by the serving tests: a real cloud server subprocess on loopback (``cloud_server``).
The model it serves is the ``served_model`` fixture of ``tests/conftest.py``.

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

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

TOKEN = 'test-token-5f3a'


def wait_ready(url: str, proc, timeout: float = 180.0) -> None:
    import httpx
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            proc.log.seek(0)
            raise AssertionError(f'server exited with {proc.returncode}:\n'
                                 f'{proc.log.read()[-3000:]}')
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
    # a file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it
    log = open(tmp_path / f'server-{time.monotonic_ns()}.log', 'w+')
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    proc.log = log
    try:
        t0 = time.time()
        while not osp.exists(port_file):
            if proc.poll() is not None or time.time() - t0 > 180:
                proc.kill()
                log.seek(0)
                raise AssertionError(f'server did not start:\n{log.read()[-3000:]}')
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
        log.close()
