"""The two distributions as a user gets them: wheels built from the project files, installed into
fresh virtual environments, used from outside the repository.

* ``ecc-mmdet-edge`` (edge/): ``ecc_edge`` alone, installed where torch, mmdet and mmcv are not.
* ``ecc_mmdet`` (pyproject.toml): the extras, ``ecc_edge`` too (``pip install .`` needs nothing
  else), the configs inside the package, and ``_base_ = 'ecc_mmdet::configs/...'`` from a user's directory (installed, and in
  the editable development install).

Wheels build offline (``--no-build-isolation --no-index``) from a copy of the files a checkout has,
so the repository gets no build/ or egg-info; the venvs take numpy and constriction (edge) or the
whole test stack (main) from this environment instead of downloading them.
"""
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

from conftest import REPO

VERSION = re.search(r"__version__ = '([^']+)'",
                    open(osp.join(REPO, 'ecc_mmdet', 'version.py')).read()).group(1)
SKIP = shutil.ignore_patterns('__pycache__', '*.egg-info', 'build')
HEAVY = ('torch', 'mmdet', 'mmcv', 'mmengine', 'ecc_mmdet')


def build_wheels(dest) -> dict:
    """Both wheels, from a copy of the checkout's files (symlinks kept): {'edge': .., 'main': ..}"""
    src = osp.join(dest, 'src')
    for d in ('ecc_mmdet', 'ecc_edge', 'configs', 'edge'):
        shutil.copytree(osp.join(REPO, d), osp.join(src, d), symlinks=True, ignore=SKIP)
    for f in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(osp.join(REPO, f), src)
    out = osp.join(dest, 'wheels')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-index',
                    '--no-build-isolation', osp.join(src, 'edge'), src, '-w', out],
                   check=True, capture_output=True, text=True, timeout=300)
    return dict(edge=glob.glob(osp.join(out, 'ecc_mmdet_edge-*.whl'))[0],
                main=glob.glob(osp.join(out, 'ecc_mmdet-*.whl'))[0])


def make_venv(path, wheels, extra_paths=()) -> str:
    """A venv without pip or system site-packages, ``wheels`` installed into it, ``extra_paths``
    appended to its sys.path (a .pth file); returns its python."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', path], check=True, timeout=120)
    python = osp.join(path, 'bin', 'python')
    subprocess.run([sys.executable, '-m', 'pip', '--python', python, 'install', '-q', '--no-deps',
                    '--no-index', *wheels], check=True, capture_output=True, text=True, timeout=300)
    code = 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
    purelib = subprocess.run([python, '-c', code], check=True, capture_output=True,
                             text=True).stdout.strip()
    with open(osp.join(purelib, 'extra_paths.pth'), 'w') as f:
        f.write(''.join(p + '\n' for p in extra_paths))
    return python


def run_outside(python, code, cwd, timeout=300) -> str:
    """``code`` in ``python`` from ``cwd`` with no PYTHONPATH; returns stdout (asserts success)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([python, '-c', textwrap.dedent(code)], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope='module')
def wheels(tmp_path_factory):
    return build_wheels(str(tmp_path_factory.mktemp('wheels')))


def _metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
    return names, meta


def test_main_wheel_has_the_configs_extras_and_the_edge_package(wheels):
    names, meta = _metadata(wheels['main'])
    configs = sorted(osp.relpath(p, osp.join(REPO, 'configs'))
                     for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
    assert len(configs) > 25
    shipped = {n[len('ecc_mmdet/.mim/configs/configs/'):] for n in names
               if n.startswith('ecc_mmdet/.mim/configs/configs/')}
    assert set(configs) <= shipped, sorted(set(configs) - shipped)
    assert 'ecc_mmdet/.mim/model-index.yml' in names and 'ecc_mmdet/registry.py' in names
    assert 'ecc_edge/codecs/bitstream.py' in names and 'ecc_edge/runtime.py' in names
    assert any(n.endswith('.dist-info/licenses/LICENSE') for n in names)
    assert re.search(rf'^Version: {re.escape(VERSION)}$', meta, re.M)
    assert re.search(r'^License-Expression: Apache-2.0$', meta, re.M)
    extras = set(re.findall(r'^Provides-Extra: (\S+)$', meta, re.M))
    assert {'serving', 'edge', 'robustness', 'tests'} <= extras
    requires = re.findall(r'^Requires-Dist: (.+)$', meta, re.M)
    assert not any(r.startswith('ecc-mmdet-edge') for r in requires)  # self-contained
    assert any(r.startswith('mmdet') for r in requires)
    assert not any(r.startswith('mmcv') for r in requires)  # see pyproject.toml
    assert any(r.startswith('fastapi') and 'extra == "serving"' in r for r in requires)


def test_edge_wheel_imports_where_torch_mmdet_and_mmcv_are_not(wheels, tmp_path):
    names, meta = _metadata(wheels['edge'])
    assert {n.split('/')[0] for n in names if not n.split('/')[0].endswith('.dist-info')} == {
        'ecc_edge'}
    assert re.search(rf'^Version: {re.escape(VERSION)}$', meta, re.M)
    # numpy and constriction (its only dependencies) linked from this environment, nothing else
    deps = tmp_path / 'deps'
    deps.mkdir()
    for name in ('numpy', 'constriction'):
        pkg = osp.dirname(__import__(name).__file__)
        for d in (pkg, pkg + '.libs'):  # a manylinux wheel's vendored libraries
            if osp.isdir(d):
                os.symlink(d, deps / osp.basename(d))
    python = make_venv(str(tmp_path / 'venv'), [wheels['edge']], [str(deps)])
    out = run_outside(python, f"""
        import importlib.util, os, sys
        import numpy as np
        import ecc_edge, ecc_edge.client, ecc_edge.runtime
        from ecc_edge.codecs import decode_with_histogram, encode_with_histogram
        assert ecc_edge.__file__.startswith(sys.prefix + os.sep), ecc_edge.__file__
        assert not any(importlib.util.find_spec(m) for m in {HEAVY!r})
        symbols = np.random.default_rng(0).integers(0, 16, 500)
        assert (decode_with_histogram(encode_with_histogram(symbols, 16), 500, 16) == symbols).all()
        print('ok')
    """, tmp_path)
    assert out.strip().endswith('ok')


USER_CONFIG = """\
_base_ = 'ecc_mmdet::configs/ecc_faster_rcnn_r18_synthetic.py'
model = dict(compressor=dict(latent_channels=8))
"""


def test_user_config_on_ecc_mmdet_bases_runs_from_the_installed_wheels(
        wheels, tiny_coco, tmp_path):
    """The installed wheel in a fresh venv (torch & co. from this environment): a user's
    config in its own directory inherits a packaged config and runs the evaluation loop."""
    (tmp_path / 'user.py').write_text(USER_CONFIG)
    python = make_venv(str(tmp_path / 'venv'), [wheels['main']],
                       [sysconfig.get_paths()['purelib']])
    out = run_outside(python, f"""
        import os, sys
        import ecc_mmdet  # opens the scope (mmengine reads _base_ before custom_imports)
        from ecc_mmdet.apis import load_config
        from mmengine.runner import Runner
        assert ecc_mmdet.__file__.startswith(sys.prefix + os.sep), ecc_mmdet.__file__
        cfg = load_config('user.py', data_root={tiny_coco!r})
        assert cfg.model.compressor.latent_channels == 8
        # inherited dicts carry the scope: the builders must find mmdet's components through it
        assert cfg.val_dataloader.dataset._scope_ == 'ecc_mmdet'
        cfg.work_dir = 'work_dir'
        metrics = Runner.from_cfg(cfg).val()
        assert metrics['comm/bytes_mean'] > 0 and 'coco/bbox_mAP' in metrics, metrics
        # nothing from the checkout (the test environment may live in it: {sys.prefix!r})
        files = [getattr(m, '__file__', None) or '' for m in list(sys.modules.values())]
        from_repo = sorted(f for f in files if f.startswith({REPO!r} + os.sep)
                           and not f.startswith({sys.prefix!r} + os.sep))
        assert not from_repo, from_repo
        print('ok')
    """, tmp_path)
    assert out.strip().endswith('ok')


def test_user_config_on_ecc_mmdet_bases_loads_in_the_development_install(tmp_path):
    """The editable install (tools/setup_env.sh): the same scope resolves to the checkout."""
    (tmp_path / 'user.py').write_text(USER_CONFIG)
    out = run_outside(sys.executable, f"""
        import os
        import ecc_mmdet
        from mmengine.config import Config
        cfg = Config.fromfile('user.py')
        assert cfg.model.type == 'EdgeCloudTwoStageDetector', cfg.model.type
        assert cfg.model.compressor.latent_channels == 8
        assert os.path.realpath(ecc_mmdet.__file__).startswith({REPO!r} + os.sep)
        print('ok')
    """, tmp_path)
    assert out.strip().endswith('ok')
