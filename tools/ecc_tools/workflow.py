"""Run the project's CLI tools as resumable stages (used by tools/demo.py and the benchmarks).

Each stage is a subprocess of tools/train.py: a clean Runner per stage, the full log kept on
disk, only progress lines echoed, and a finished stage (its final checkpoint exists) skipped.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
from typing import List, Optional, Sequence

from . import REPO
PROGRESS = re.compile(r'Epoch\((train|val|test)\) *\[\d+\]\[ *\d+/\d+\]|bbox_mAP_copypaste|'
                      r'Error|error:|Traceback|KnowledgeAdaptationHook')


def run_logged(cmd: Sequence[str], log_file: str, echo_every: int = 1) -> None:
    """Run ``cmd`` from the repository root; keep its output in ``log_file``, echo progress."""
    os.makedirs(osp.dirname(osp.abspath(log_file)), exist_ok=True)
    print('  $ ' + ' '.join(str(c) for c in cmd), flush=True)
    shown = 0
    with open(log_file, 'w') as log:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED='1'))
        for line in proc.stdout:
            log.write(line)
            if PROGRESS.search(line):
                shown += 1
                if shown % echo_every == 0 or 'Error' in line or 'mAP' in line:
                    print('    ' + line.rstrip()[:170], flush=True)
        rc = proc.wait()
    if rc != 0:
        tail = open(log_file).read()[-2500:]
        raise RuntimeError(f'command failed (exit {rc}): {" ".join(map(str, cmd))}\n'
                           f'last lines of {log_file}:\n{tail}')


def final_checkpoint(config: str, work_dir: str) -> str:
    """Where an epoch-based config's last checkpoint lands (``epoch_<max_epochs>.pth``)."""
    from mmengine.config import Config
    return osp.join(work_dir, f'epoch_{Config.fromfile(config).train_cfg.max_epochs}.pth')


def train_stage(config: str, work_dir: str, data_root: Optional[str] = None,
                cfg_options: Sequence[str] = (), echo_every: int = 1) -> str:
    """Train ``config`` unless its final checkpoint exists; resume a partial run.

    The schedule is the config's own (change it in the config, so the LR schedule follows).
    Returns the final checkpoint path.
    """
    ckpt = final_checkpoint(config, work_dir)
    if osp.isfile(ckpt):
        print(f'  reusing {ckpt}', flush=True)
        return ckpt
    os.makedirs(work_dir, exist_ok=True)
    cmd: List[str] = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir]
    if glob.glob(osp.join(work_dir, 'epoch_*.pth')):
        cmd.append('--resume')
    if data_root:
        cmd += ['--data-root', data_root]
    if cfg_options:
        cmd += ['--cfg-options', *cfg_options]
    run_logged(cmd, osp.join(work_dir, 'train.log'), echo_every)
    if not osp.isfile(ckpt):
        raise RuntimeError(f'training finished without writing {ckpt}; see '
                           f'{osp.join(work_dir, "train.log")}')
    return ckpt
