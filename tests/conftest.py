"""Shared fixtures: a tiny seeded synthetic COCO set and helpers to run the real CLI tools."""
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BASELINE_CFG = osp.join(REPO, 'configs', 'faster_rcnn_r18_fpn_synthetic.py')


@pytest.fixture(scope='session')
def tiny_coco(tmp_path_factory):
    """8 train / 4 val images of 64 px, seeded; shared by every test that needs a dataset."""
    from ecc_mmdet.datasets.synthetic_coco import generate_synthetic_coco
    root = tmp_path_factory.mktemp('tiny_coco')
    generate_synthetic_coco(str(root), num_train=8, num_val=4, image_size=64, seed=1,
                            min_objects=2, max_objects=4, progress=False)
    return str(root)


def data_options(root):
    """Arguments that point every dataloader and evaluator of a config at ``root``."""
    return ['--data-root', str(root)]


def run_tool(tool, *args, check=True, timeout=600):
    """Run tools/<tool>.py in a fresh interpreter, as a user would; returns CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=os.environ.get(
        'OMP_NUM_THREADS', '2'))
    proc = subprocess.run([sys.executable, osp.join(REPO, 'tools', f'{tool}.py'), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{tool}.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-3000:]}')
    return proc
