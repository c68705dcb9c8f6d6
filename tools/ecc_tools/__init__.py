"""Code the repository's tools share (not part of the installed ``ecc_mmdet`` package).

``cli``: arguments and config building of ``train.py``/``test.py``; ``workflow``: training
stages run as subprocesses (demo, benchmarks); ``rate_accuracy``: the rate-accuracy engine with
the project's targets, tables and plots. The tools import it as ``ecc_tools`` (their own
directory is first on ``sys.path`` when run as ``python tools/X.py``).
"""
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
