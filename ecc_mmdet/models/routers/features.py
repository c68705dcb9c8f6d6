"""Image-level features of the edge exits' outputs, shared by the routers and by online
adaptation (whose upload selection and entropy loss use the same uncertainty as the router)."""
import torch
from torch import Tensor


def top_anchor_probs(exits, k: int, detach: bool = True) -> Tensor:
    """(N, k, C) sigmoid class scores of each image's k anchors with the highest max score
    (zero-padded when an image has fewer anchors). ``detach=False`` keeps the graph (the anchor
    choice itself is not differentiable), for entropy minimisation."""
    c = exits.num_classes
    n = exits.cls_scores[0].shape[0]
    flat = torch.cat([(s.detach() if detach else s).permute(0, 2, 3, 1).reshape(n, -1, c)
                      for s in exits.cls_scores], 1).sigmoid()
    k_eff = min(k, flat.shape[1])
    idx = flat.detach().max(-1).values.topk(k_eff, dim=1).indices
    top = torch.gather(flat, 1, idx[..., None].expand(-1, -1, c))
    if k_eff < k:
        top = torch.cat([top, top.new_zeros(n, k - k_eff, c)], 1)
    return top


def class_entropy(p: Tensor) -> Tensor:
    """(..., C) sigmoid scores -> (...) entropy in [0, 1] of [p_1..p_C, 1 - max p] (renormalised;
    C classes + background), divided by ln(C + 1)."""
    q = torch.cat([p, 1 - p.max(-1, keepdim=True).values], -1).clamp_min(1e-12)
    q = q / q.sum(-1, keepdim=True)
    return -(q * q.log()).sum(-1) / torch.log(torch.tensor(float(q.shape[-1]), dtype=q.dtype))


def top_k_entropy(exits, k: int, detach: bool = True) -> Tensor:
    """(N,) mean :func:`class_entropy` of each image's ``k`` most confident anchors: the exit's
    uncertainty about the image (``EntropyRouter``'s score, CEMA's selection statistic)."""
    return class_entropy(top_anchor_probs(exits, k, detach).double()).mean(-1).clamp(0, 1)


#: the learned router's detection counts: exit detections scoring at least each threshold,
#: divided by the scale (the light edge reads both from the sidecar)
COUNT_THRESHOLDS, COUNT_SCALE = (0.3, 0.5, 0.7), 10.0


def router_features(exits, top_k: int = 16, pool_features: bool = False) -> Tensor:
    """(N, D) float32 features of the learned router: the top-k anchors' max scores (sorted)
    and class entropies, the count of exit detections above 0.3 / 0.5 / 0.7 (/ 10), and
    (``pool_features``) F_k average-pooled."""
    p = top_anchor_probs(exits, top_k)
    maxp = p.max(-1).values
    ent = class_entropy(p)
    counts = torch.stack([
        torch.tensor([float((r.scores >= t).sum()) for r in exits.results], device=p.device)
        for t in COUNT_THRESHOLDS], -1) / COUNT_SCALE
    parts = [maxp, ent, counts]
    if pool_features:
        parts.append(exits.features.detach().float().mean((2, 3)))
    return torch.cat(parts, -1).float()


#: the gain features' score bands of exit detections ([lo, hi) each; the last one holds 1.0)
#: and the anchor thresholds of the maps' counts (the light edge reads both from the sidecar)
SCORE_BANDS, ANCHOR_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.01), (0.05, 0.1, 0.2)
#: width of :func:`gain_features`: soft count, best score, the anchor counts, the bands
NUM_GAIN_FEATURES = 2 + len(ANCHOR_THRESHOLDS) + len(SCORE_BANDS) - 1


def gain_features(exits) -> Tensor:
    """(N, NUM_GAIN_FEATURES) float32: what the exit's maps
    expect against what it reports, so a router can see "nothing found where something usually
    is": log1p of the maps' soft object count (sum over anchors of the top class score), the best
    detection score (0 without any), log1p of the anchors at least each anchor threshold, and
    the detections per score band / COUNT_SCALE. Sums run in float64 (summation order then
    moves no float32 value)."""
    c, n = exits.num_classes, exits.cls_scores[0].shape[0]
    top = torch.cat([s.detach().permute(0, 2, 3, 1).reshape(n, -1, c) for s in exits.cls_scores],
                    1).double().sigmoid().max(-1).values
    parts = [torch.log1p(top.sum(1)),
             torch.tensor([float(r.scores.max()) if len(r.scores) else 0.0
                           for r in exits.results], dtype=torch.float64, device=top.device)]
    parts += [torch.log1p((top >= t).sum(1).double()) for t in ANCHOR_THRESHOLDS]
    for lo, hi in zip(SCORE_BANDS[:-1], SCORE_BANDS[1:]):
        parts.append(torch.tensor([float(((r.scores >= lo) & (r.scores < hi)).sum())
                                   for r in exits.results], dtype=torch.float64,
                                  device=top.device) / COUNT_SCALE)
    return torch.stack(parts, -1).float()


def channel_statistics(features: Tensor) -> Tensor:
    """(N, 2C) float32: each image's channel means and spatial standard deviations of F_k, the
    raw input of the learned router's out-of-distribution distance."""
    f = features.detach().double().flatten(2)
    return torch.cat([f.mean(-1), f.std(-1, unbiased=False)], -1).float()
