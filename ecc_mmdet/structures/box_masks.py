"""Where the ground-truth objects are, on a feature map's grid (training losses weight by it)."""
from typing import Sequence

import torch
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

__all__ = ['object_mask']


def object_mask(batch_data_samples, shape: Sequence[int], input_hw: Sequence[int]) -> Tensor:
    """(N, 1, h, w) float mask of a ``shape = (N, C, h, w)`` map of an ``input_hw`` batch: 1 on
    every cell a GT box touches (rounded outward), 0 elsewhere; images without boxes are all 0."""
    n, _, h, w = shape
    sy, sx = input_hw[0] / h, input_hw[1] / w
    mask = torch.zeros((n, 1, h, w))
    for k, sample in enumerate(batch_data_samples):
        gt = sample.get('gt_instances', None)
        if gt is None or 'bboxes' not in gt or len(gt) == 0:
            continue
        for x1, y1, x2, y2 in get_box_tensor(gt.bboxes).detach().cpu().tolist():
            c0, c1 = max(0, int(x1 // sx)), min(w, int(-(-x2 // sx)))
            r0, r1 = max(0, int(y1 // sy)), min(h, int(-(-y2 // sy)))
            mask[k, :, r0:r1, c0:c1] = 1.0
    return mask
