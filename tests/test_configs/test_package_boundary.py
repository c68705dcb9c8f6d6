"""The installed package stands alone: no tool, no repository path, no subprocess launching.

The installed wheels are checked the same way in test_packaging.py (a fresh venv, a user's
directory)."""
import importlib.metadata
import os
import os.path as osp
import subprocess
import sys
import textwrap

from conftest import REPO


def test_apis_import_from_outside_the_repository(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        before = list(sys.path)
        import ecc_mmdet.apis
        repo = {REPO!r}
        # the installed packages (ecc_mmdet and the torch-free ecc_edge it codes with) and the
        # installed environment (a venv may live in the checkout)
        allowed = (os.path.join(repo, 'ecc_mmdet') + os.sep, os.path.join(repo, 'ecc_edge') + os.sep,
                   os.path.abspath(sys.prefix) + os.sep)
        outside = sorted(name for name, mod in list(sys.modules.items())
                         if getattr(mod, '__file__', None)
                         and os.path.abspath(mod.__file__).startswith(repo + os.sep)
                         and not os.path.abspath(mod.__file__).startswith(allowed))
        assert not outside, f'modules imported from the repository outside the package: {{outside}}'
        assert sys.path == before, 'importing the package changed sys.path'
        assert callable(ecc_mmdet.apis.evaluate_detector)
        assert not hasattr(ecc_mmdet.apis, 'run_rate_accuracy')  # orchestration is in tools/
        print('ok')
    """)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('ok'), proc.stderr[-3000:]


def test_library_source_launches_nothing_and_knows_no_repository_path():
    offenders = []
    for root, _, files in os.walk(osp.join(REPO, 'ecc_mmdet')):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = osp.join(root, name)
            src = open(path).read()
            for needle in ('import subprocess', 'sys.path.insert', 'sys.path.append',
                           "'work_dirs/demo", 'tools/demo.py'):
                if needle in src:
                    offenders.append(f'{osp.relpath(path, REPO)}: {needle}')
    assert not offenders, offenders


def test_one_distribution_owns_each_package():
    """ecc_mmdet ships the ecc_edge it codes with (``pip install .`` needs nothing else); the
    device-only distribution (edge/, test_packaging.py) is not installed beside it, so no two
    distributions own a file."""
    owners = importlib.metadata.packages_distributions()
    assert set(owners.get('ecc_edge', ())) == {'ecc_mmdet'}, owners.get('ecc_edge')
    assert set(owners.get('ecc_mmdet', ())) == {'ecc_mmdet'}, owners.get('ecc_mmdet')
    assert not any((r or '').startswith('ecc-mmdet-edge')
                   for r in importlib.metadata.requires('ecc_mmdet') or [])
