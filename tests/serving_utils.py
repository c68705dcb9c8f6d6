"""Shared by the serving tests: a real cloud server subprocess on loopback (``cloud_server``).
The model it serves is the ``served_model`` fixture of ``tests/conftest.py``.

Not a conftest.py: a second module named ``conftest`` would shadow ``tests/conftest.py`` (the
test folders are not packages), so test modules import from here explicitly.
"""
import contextlib
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

TOKEN = 'test-token-5f3a'


def wait_ready(url: str, proc, timeout: float = 180.0) -> None:
    """Until the server at ``url`` is ready (``proc.log``: its output file)."""
    from ecc_tools.serving_bench import wait_ready as wait
    wait(url, proc, proc.log, timeout)


@contextlib.contextmanager
def cloud_server(files, tmp_path, *extra, token=TOKEN):
    """``tools/serve_cloud.py`` in a subprocess on 127.0.0.1 (a free port), one torch thread
    -> yields (base url, Popen). Stopped with SIGTERM (graceful) on exit; its log stays in
    ``tmp_path``."""
    from ecc_tools.serving_bench import server
    with server(files['config'], files['checkpoint'], token, timeout=180, extra_args=extra,
                log_dir=str(tmp_path)) as (url, proc):
        yield url, proc
