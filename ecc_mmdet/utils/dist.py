"""Distributed training and testing on machines without GPUs (``torchrun`` + gloo).

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` before it creates the process
group, and its default DDP wrapper pins ``device_ids=[LOCAL_RANK]``; both fail on a CPU-only
machine (``module 'torch._C' has no attribute '_cuda_setDevice'``; DDP refuses device ids for a
CPU module). :func:`setup_cpu_distributed` does the two CPU-correct steps before the Runner is
built: it creates the gloo process group itself (mmengine then skips its own ``init_dist``) and
sets ``model_wrapper_cfg`` to an ``MMDistributedDataParallel`` without device ids. On a machine
with CUDA it does nothing, so the same command runs the normal multi-GPU path there.
"""
import logging
import os

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log

from ..errors import ConfigError

_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def setup_cpu_distributed(cfg) -> bool:
    """Prepare ``cfg`` (and the process group) for ``launcher='pytorch'`` on CPUs.

    Returns True when it did so; False for a non-distributed config or a machine with CUDA.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher in (None, 'none') or torch.cuda.is_available():
        return False
    if launcher != 'pytorch':
        raise ConfigError(f'launcher={launcher!r} needs GPUs; on a CPU-only machine start the '
                          'processes with torchrun (tools/dist_train.sh) and --launcher pytorch')
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ConfigError('--launcher pytorch expects the variables torchrun sets '
                          f'({", ".join(missing)} missing): start the job with torchrun '
                          '(tools/dist_train.sh does)')
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    backend = dist_cfg.get('backend', 'nccl')
    if backend != 'gloo':
        print_log(f'no CUDA device: using the gloo backend instead of {backend!r}',
                  logger='current', level=logging.WARNING)
        dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        kwargs = {k: v for k, v in dist_cfg.items() if k != 'backend'}
        torch_dist.init_process_group(backend='gloo', **kwargs)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper.setdefault('device_ids', None)  # CPU modules take no device ids
    cfg.model_wrapper_cfg = wrapper
    return True


def finish_distributed() -> None:
    """Let every rank finish, then close the process group.

    A process that exits with the gloo group still open can abort in its destructor
    ("terminate called without an active exception", SIGABRT) after its work is done; the
    launcher then reports the whole job as failed.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
