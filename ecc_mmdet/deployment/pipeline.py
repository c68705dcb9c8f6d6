"""The deployment path of a split detector, step by step, each step computed once:

    edge features F_k -> edge exits -> router -> encode only the offloaded images -> [network]
    -> decode -> cloud -> merge both sets of results in the input order

The model provides the steps: ``edge_features`` and ``cloud_predict``, its ``tiers`` (exits,
router, extension exit: :class:`~ecc_mmdet.models.detectors.edge_tiers.EdgeTiers`) and its
``payload_codec`` (encode, unpack, decompress, detections reports:
:class:`~ecc_mmdet.models.detectors.payload_codec.PayloadCodec`). This module orders them, and a
:class:`~ecc_mmdet.evaluation.meter.DeploymentMeter` measures them and writes each image's
:class:`~ecc_mmdet.structures.CommRecord`. The meter is the caller's (``meter=``), by default the
one this module holds per model (:func:`meter_for`): measurement never enters the model.
"""
import weakref
from typing import List, NamedTuple, Optional, Sequence

import torch
from mmdet.structures import DetDataSample
from torch import Tensor

from ecc_edge.codecs.detections import FRAMING_BYTES as DETECTIONS_FRAMING
from ..errors import ConfigError
from ..structures import comm_record
from ..evaluation.meter import BatchTrace, DeploymentMeter

__all__ = ['EdgeOutcome', 'meter_for', 'run_cloud', 'run_deployment', 'run_edge']

_METERS = weakref.WeakKeyDictionary()  # model -> its DeploymentMeter, gone with the model


def meter_for(model) -> DeploymentMeter:
    """The meter this module holds for ``model`` (``predict`` / ``decode_and_predict`` without
    ``meter=``): one per model, so FLOPs are counted once per step and input shape; it follows the
    model's ``measure_flops`` / ``estimate_rate`` settings at every call."""
    meter = _METERS.get(model)
    if meter is None:
        meter = _METERS[model] = DeploymentMeter()
    meter.measure_flops = bool(getattr(model, 'measure_flops', True))
    meter.estimate_rate = bool(getattr(model, 'estimate_rate', True))
    return meter


class EdgeOutcome(NamedTuple):
    """What the edge did with a batch: per image, either detections (finished on the edge; with
    ``edge_report`` also their compact report in ``payloads``) or a feature payload to send, and
    the tier ('cloud' = offloaded, or the exit that finished it)."""
    results: List[Optional[DetDataSample]]
    payloads: List[Optional[bytes]]
    tiers: List[str]
    estimated_bits: List[Optional[float]]


def run_edge(model, batch_inputs: Tensor, samples: Sequence[DetDataSample],
             rescale: bool = True, trace: Optional[BatchTrace] = None,
             force_tier: Optional[str] = None) -> EdgeOutcome:
    """The edge side: F_k once, the exits and the router (when configured), then encode only the
    images the router offloads. ``force_tier`` ('edge' or 'cloud') sends every image there
    instead of asking the router (the exits still run: their cost is part of either tier)."""
    _check_force_tier(model, force_tier)
    samples = list(samples)
    n = len(samples)
    trace = trace or DeploymentMeter(measure_flops=False, estimate_rate=False).batch(n)
    everyone = range(n)
    shape = tuple(batch_inputs.shape[1:])
    with trace.step('edge', everyone, shape):
        f = model.edge_features(batch_inputs)
    tiers, results = ['cloud'] * n, [None] * n
    if model.edge_exit is not None and (model.router is not None or force_tier is not None):
        tiers, results = _edge_tiers(model, f, samples, rescale, trace, force_tier, shape)
    off = [i for i in everyone if tiers[i] == 'cloud']
    payloads: List[Optional[bytes]] = [None] * n
    kept = [i for i in everyone if tiers[i] != 'cloud']
    if kept and getattr(model, 'edge_report', None) is not None:
        with trace.step('report', kept, None):  # serialisation only: no torch operators
            for i, report in zip(kept, model.payload_codec.reports([results[i] for i in kept])):
                payloads[i] = report
    est_bits: List[Optional[float]] = [None] * n
    if off:
        f_off = f[torch.as_tensor(off, device=f.device)] if len(off) < n else f
        with trace.step('encode', off, shape):
            encoded = model.payload_codec.encode(f_off, [samples[i] for i in off])
        for i, p in zip(off, encoded):
            payloads[i] = p
        if trace.meter.estimate_rate and hasattr(model.compressor, 'estimate_bits'):
            for i, b in zip(off, model.compressor.estimate_bits(f_off).tolist()):
                est_bits[i] = float(b)
    return EdgeOutcome(results, payloads, tiers, est_bits)


def _edge_tiers(model, f: Tensor, samples: List[DetDataSample], rescale: bool,
                trace: BatchTrace, force_tier: Optional[str], shape):
    """(tier, edge result or None) per image: the exits, the router (or ``force_tier``), and
    MEANet's extension exit for kept images whose main-exit top class is hard."""
    n = len(samples)
    everyone = range(n)
    tiers: List[str] = ['cloud'] * n
    results: List[Optional[DetDataSample]] = [None] * n
    with trace.step('exit', everyone, shape):
        exits = model.tiers.run_exits(f, samples, rescale)
    with trace.step('route', everyone, shape):
        offload = model.tiers.route(exits) if force_tier is None else [force_tier == 'cloud'] * n
    kept = [i for i in everyone if not bool(offload[i])]
    edge_results = {i: exits.results[i] for i in kept}
    ext = model.tiers.needs_extension(exits, kept) if model.extension_exit is not None else []
    if ext:
        with trace.step('extension', ext, shape):
            merged = model.tiers.run_extension(f[torch.as_tensor(ext, device=f.device)],
                                               [samples[i] for i in ext],
                                               [exits.results[i] for i in ext], rescale)
        for i, m in zip(ext, merged):
            edge_results[i] = m
            exits.tiers[i] = 'edge_extension'
    for i in kept:
        tiers[i] = exits.tiers[i]
        results[i] = model.tiers.finish_on_edge(samples[i], edge_results[i])
    return tiers, results


def _check_force_tier(model, force_tier: Optional[str]) -> None:
    if force_tier not in (None, 'edge', 'cloud'):
        raise ValueError(f"force_tier must be None, 'edge' or 'cloud', got {force_tier!r}")
    if force_tier == 'edge' and model.edge_exit is None:
        raise ConfigError("force_tier='edge' needs a model with an edge_exit")


def run_deployment(model, batch_inputs: Tensor, samples: Sequence[DetDataSample],
                   rescale: bool = True, meter: Optional[DeploymentMeter] = None,
                   force_tier: Optional[str] = None) -> List[DetDataSample]:
    """Edge + router + cloud on a preprocessed batch -> detections in input order, accounted;
    ``force_tier``: see :func:`run_edge`."""
    meter = meter or meter_for(model)
    samples = list(samples)
    n = len(samples)
    trace = meter.batch(n)
    edge = run_edge(model, batch_inputs, samples, rescale, trace, force_tier)
    results = list(edge.results)
    payload_bytes, header_bytes = [0] * n, [0] * n
    codecs = [model.compressor.codec_name if t == 'cloud' else 'none' for t in edge.tiers]
    for i, (t, p) in enumerate(zip(edge.tiers, edge.payloads)):
        if t != 'cloud' and p is not None:  # the edge-finished image's detections report
            payload_bytes[i], header_bytes[i] = len(p), DETECTIONS_FRAMING
            codecs[i] = 'detections_report'
    off = [i for i in range(n) if edge.tiers[i] == 'cloud']
    if off:
        cloud = _cloud_steps(model, trace, [edge.payloads[i] for i in off],
                             [samples[i] for i in off], off, rescale)
        for i, (res, body) in zip(off, cloud):
            results[i] = res
            payload_bytes[i] = len(edge.payloads[i])
            header_bytes[i] = payload_bytes[i] - body
    records = trace.records(edge.tiers, payload_bytes, header_bytes, codecs,
                            edge.estimated_bits, model.edge_param_count())
    for res, rec in zip(results, records):
        comm_record.attach(res, rec)
    return results


def run_cloud(model, payloads: Sequence[bytes], samples: Sequence[DetDataSample],
              rescale: bool = True, meter: Optional[DeploymentMeter] = None
              ) -> List[DetDataSample]:
    """The cloud side alone: payload bytes -> detections, with bytes and cloud time accounted."""
    meter = meter or meter_for(model)
    n = len(payloads)
    trace = meter.batch(n)
    cloud = _cloud_steps(model, trace, payloads, samples, range(n), rescale)
    records = trace.records(['cloud'] * n, [len(p) for p in payloads],
                            [len(p) - body for p, (_, body) in zip(payloads, cloud)],
                            model.compressor.codec_name)
    for (res, _), rec in zip(cloud, records):
        comm_record.attach(res, rec)
    return [res for res, _ in cloud]


def _cloud_steps(model, trace: BatchTrace, payloads, samples, indices, rescale):
    """[(result sample, body bytes)] of decode + cloud for the images at batch ``indices``."""
    with trace.step('decode', indices, None):  # parsing and validation: no torch ops
        parsed = model.payload_codec.unpack(payloads, samples)
    with trace.step('decode', indices, ('latent', tuple(parsed[0].latent_shape))):
        f_hat = model.payload_codec.decompress(parsed)
    with trace.step('cloud', indices, tuple(f_hat.shape[1:])):
        results = model.cloud_predict(f_hat, list(samples), rescale)
    return [(r, len(p.body)) for r, p in zip(results, parsed)]
