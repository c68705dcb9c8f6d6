"""Generalized divisive normalization (Ballé et al. 2016), the image codecs' nonlinearity.

``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)`` (GDN, in the encoder) and its approximate
inverse ``y_i = x_i * sqrt(...)`` (IGDN, in the decoder). It gaussianizes the latent better than a
pointwise activation, which is why image codecs use it; whether it helps a feature codec is what
``EntropyBottleneckNeck(gdn=True)`` lets one measure.

Written here (about 30 lines) rather than imported: CompressAI, which has one, is not a
dependency of this package. ``beta`` and ``gamma`` are kept non-negative by the usual
reparameterization (stored as square roots with a pedestal, bounded below).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['GDN']

_PEDESTAL = 2.0**-36


class GDN(nn.Module):
    """GDN (``inverse=False``) or IGDN (``inverse=True``) over ``channels`` channels."""

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f'GDN: channels must be a positive int, got {channels!r}')
        self.inverse = bool(inverse)
        self.beta_bound = (beta_min + _PEDESTAL)**0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + _PEDESTAL))
        self.gamma = nn.Parameter(
            torch.sqrt(gamma_init * torch.eye(channels) + _PEDESTAL))

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta.clamp(min=self.beta_bound)**2 - _PEDESTAL
        gamma = self.gamma.clamp(min=_PEDESTAL**0.5)**2 - _PEDESTAL
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if self.inverse else x * torch.rsqrt(norm)

    def extra_repr(self) -> str:
        return f'channels={self.beta.numel()}, inverse={self.inverse}'
