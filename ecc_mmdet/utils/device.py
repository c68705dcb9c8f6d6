"""Where tensors leave their device, and encoding that does not depend on how cuDNN feels.

Users train and test on CUDA; the range coder (constriction), hashes, JSON and OpenCV take host
memory. Every tensor bound for numpy, bytes or the coder crosses here (:func:`to_numpy`,
:func:`tensor_bytes`), so a CUDA tensor never reaches them.

On CUDA, cuDNN picks a convolution algorithm per input shape (by timing it when
``cudnn.benchmark`` is on) and convolves in TF32 by default: the encoder's rounding, hence the
latent's integer symbols and the payload bytes, then depend on the batch an image came in and
even on the run. :func:`compress_per_image` encodes one image at a time under
:func:`deterministic_cuda`, so an image's payload is the same in any batch and in every run on
one machine. Across GPUs, drivers or cuDNN versions the bytes may still differ by a few symbols
(a float convolution is not bit-exact across implementations); every payload still decodes, on
any machine, to exactly the features its encoder meant (the decoder side is integer-exact).
"""
import contextlib
from typing import Callable, Iterator, List, Optional, TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ['compress_per_image', 'deterministic_cuda', 'tensor_bytes', 'to_numpy']

T = TypeVar('T')


def to_numpy(t: Tensor, dtype=None) -> np.ndarray:
    """``t``'s values as a host numpy array (detached; from any device), optionally cast."""
    array = t.detach().cpu().numpy()
    return array if dtype is None else array.astype(dtype, copy=False)


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of ``t``'s values in row-major order, any dtype (bfloat16 too), any device:
    what hashes and fingerprints read."""
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b''


@contextlib.contextmanager
def deterministic_cuda() -> Iterator[None]:
    """cuDNN's deterministic algorithms, no autotuning and no TF32 while inside; the previous
    settings afterwards. A no-op for CPU computations."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark = True, False
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


def compress_per_image(compress: Callable[[Tensor], List[T]], x: Tensor,
                       per_image: Optional[bool] = None) -> List[T]:
    """``compress(x)`` -> one item per image. ``per_image`` (default: when ``x`` is on CUDA)
    calls it image by image under :func:`deterministic_cuda`, so that an image's payload does not
    depend on its batch; on the CPU the batch gives the same bytes as its images one by one."""
    if per_image is None:
        per_image = x.is_cuda
    if not per_image:
        return compress(x)
    with deterministic_cuda():
        return [item for i in range(x.shape[0]) for item in compress(x[i:i + 1])]
