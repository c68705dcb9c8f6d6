"""Code the repository's tools share (not part of the installed ``ecc_mmdet`` package).

``cli``: arguments and config building of ``train.py``/``test.py``; ``workflow``: training
stages run as subprocesses (demo, benchmarks); ``rate_accuracy``: the rate-accuracy engine with
the project's targets, tables and plots. The tools import it as ``ecc_tools`` (their own
directory is first on ``sys.path`` when run as ``python tools/X.py``); importing it makes sure
``ecc_mmdet`` is imported, from the checkout when it is not installed.
"""
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

try:  # registers our components into mmdet's registries, patches checkpoint loading
    import ecc_mmdet  # noqa: F401
except ImportError:  # a checkout that is not pip-installed: use the package next to the tools
    sys.path.insert(0, REPO)
    import ecc_mmdet  # noqa: F401
