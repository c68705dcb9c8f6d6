"""Communication / compute-split metric: what each image cost on the network and on each side.

Sits beside ``CocoMetric`` in a list-valued evaluator::

    val_evaluator = [
        dict(type='CocoMetric', ann_file=..., metric='bbox'),
        dict(type='CommunicationMetric', bandwidth_mbps=[1.0, 10.0], rtt_ms=20.0),
    ]

It reads the :class:`~ecc_mmdet.structures.CommRecord` that the producer (an EdgeCloud
detector, or the :class:`~ecc_mmdet.datasets.transforms.JPEGCompressImage` baseline) stored in
every data sample's metainfo under ``'ecc_comm'``, and reports (with mmengine's ``comm/`` prefix):

==========================  ==================================================================
key                         meaning
==========================  ==================================================================
num_images                  images evaluated
offload_ratio               fraction of images sent to the cloud
tier_{t}_share              fraction of images whose detections came from tier t ('cloud',
                            'edge_main', 'edge_extension'; one key per tier present)
bytes_mean / _median / _p95 real payload bytes (``len(payload)``) over *offloaded* images;
                            p95 is ``numpy.percentile(..., 95)`` (linear interpolation)
kbytes_mean                 bytes_mean / 1000
header_bytes_mean           framing bytes (header + checksum) over offloaded images
est_bytes_mean              entropy-model estimate ``estimated_bits / 8 + header_bytes`` over
                            offloaded images whose record carries ``estimated_bits``
real_to_est_ratio           mean real body bytes / mean estimated body bytes (same images);
                            1.0 means the coder reaches the model's estimate exactly
bytes_per_image_mean        payload bytes over *all* images, 0 for images kept on the edge
edge_gflops / cloud_gflops  mean FLOPs / 1e9 per image on each side
edge_flops_fraction         sum(edge FLOPs) / sum(edge + cloud FLOPs)
exit_gflops                 mean FLOPs / 1e9 of the edge exits + router (part of edge_gflops)
edge_flops_fraction_without_exits   the same fraction with the exits' FLOPs left out
edge_params_m               parameters running on the edge, in millions
edge_time_ms / cloud_time_ms / codec_time_ms   mean wall time per image
uplink_ms_at_{bw}mbps       mean modelled network time per image (0 for images kept on edge)
latency_ms_at_{bw}mbps      mean modelled end-to-end latency per image
==========================  ==================================================================

``{bw}`` is the bandwidth formatted with ``%g`` and ``.`` replaced by ``p``: 10.0 -> ``10``,
2.5 -> ``2p5`` (see :func:`bandwidth_key`).

**Latency model** (per image, then averaged over all images)::

    uplink_ms  = offloaded * (payload_bytes * 8 / (bw_mbps * 1e6) * 1000 + rtt_ms)
    latency_ms = edge_time_ms + uplink_ms + cloud_time_ms

Serialisation / entropy coding is *not* added separately: producers are expected to count
encoding in ``edge_time_s`` and decoding in ``cloud_time_s`` (``codec_time_s`` is reported on its
own, for information). Bandwidth is the sustained uplink rate, with no protocol overhead and no
queueing; ``rtt_ms`` is a fixed per-request delay added once per offloaded image.

**Missing fields**: a figure is skipped (not reported, never NaN) when no record carries the
fields it needs. For images that were *not* offloaded a missing ``cloud_flops`` / ``cloud_time_s``
counts as 0 (the cloud did nothing). The latency is reported only when every image has
``edge_time_s`` and every offloaded image has ``cloud_time_s``; byte statistics over offloaded
images are skipped when no image was offloaded.
"""
import math
from numbers import Real
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from mmdet.registry import METRICS

from ..structures import comm_record as accounting

_MISSING_RECORD_MSG = (
    'CommunicationMetric: data sample {which} carries no communication record (metainfo key '
    f'{accounting.COMM_KEY!r}). The model/pipeline produced no communication record. Fix: '
    'evaluate an EdgeCloud (split) detector, which attaches the record itself, or, for the '
    'cloud-only baseline, put the JPEGCompressImage transform right after LoadImageFromFile in '
    f'the test pipeline and add {accounting.COMM_KEY!r} to PackDetInputs(meta_keys=...) '
    '(ecc_mmdet.datasets.transforms.add_jpeg_baseline does both).')


class MissingCommRecordError(ValueError):
    """A data sample reached CommunicationMetric without an ``'ecc_comm'`` record."""


def bandwidth_key(bandwidth_mbps: float) -> str:
    """The stable key fragment of a bandwidth: 10.0 -> '10mbps', 2.5 -> '2p5mbps'."""
    s = f'{float(bandwidth_mbps):g}'.replace('.', 'p').replace('-', 'm').replace('+', '')
    return f'{s}mbps'


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _cloud_value(r: dict, offloaded: bool, key: str):
    """A cloud-side figure; an image kept on the edge cost the cloud nothing."""
    v = r.get(key)
    return 0.0 if v is None and not offloaded else v


def _offload_figures(results: List[dict], offl: List[bool]) -> Dict[str, float]:
    n = len(results)
    m = {'offload_ratio': sum(offl) / n}
    tiers: Dict[str, int] = {}
    for r, o in zip(results, offl):
        t = r.get('tier') or ('cloud' if o else 'edge')
        tiers[t] = tiers.get(t, 0) + 1
    for t in sorted(tiers):
        m[f'tier_{t}_share'] = tiers[t] / n
    return m


def _byte_figures(sent: List[dict]) -> Dict[str, float]:
    """Real and estimated payload bytes over the offloaded images (none: no figure)."""
    if not sent:
        return {}
    payload = np.asarray([r['payload_bytes'] for r in sent], dtype=np.float64)
    header = np.asarray([r.get('header_bytes') or 0 for r in sent], dtype=np.float64)
    m = {'bytes_mean': float(payload.mean())}
    m['bytes_median'] = float(np.median(payload))
    m['bytes_p95'] = float(np.percentile(payload, 95))
    m['kbytes_mean'] = m['bytes_mean'] / 1000.0
    m['header_bytes_mean'] = float(header.mean())
    est = [(r['payload_bytes'], r.get('header_bytes') or 0, r['estimated_bits'])
           for r in sent if r.get('estimated_bits') is not None]
    if est:
        real_body = _mean([p - h for p, h, _ in est])
        est_body = _mean([e / 8.0 for _, _, e in est])
        m['est_bytes_mean'] = _mean([e / 8.0 + h for _, h, e in est])
        if est_body > 0:
            m['real_to_est_ratio'] = real_body / est_body
    return m


def _compute_figures(results: List[dict], offl: List[bool]) -> Dict[str, float]:
    """The compute split: FLOPs per side, the exits' share, edge parameters."""
    m: Dict[str, float] = {}
    edge_flops = [r.get('edge_flops') for r in results]
    cloud_flops = [_cloud_value(r, o, 'cloud_flops') for r, o in zip(results, offl)]
    e = [v for v in edge_flops if v is not None]
    c = [v for v in cloud_flops if v is not None]
    if e:
        m['edge_gflops'] = _mean(e) / 1e9
    if c:
        m['cloud_gflops'] = _mean(c) / 1e9
    both = [(a, b) for a, b in zip(edge_flops, cloud_flops) if a is not None and b is not None]
    if both:
        total = sum(a + b for a, b in both)
        if total > 0:
            m['edge_flops_fraction'] = sum(a for a, _ in both) / total
    exit_f = [(a, x, b) for (a, b), x in zip(
        zip(edge_flops, cloud_flops), [r.get('exit_flops') for r in results])
        if a is not None and b is not None and x is not None]
    if exit_f and any(x for _, x, _ in exit_f):
        m['exit_gflops'] = _mean([x for _, x, _ in exit_f]) / 1e9
        total = sum(a - x + b for a, x, b in exit_f)
        if total > 0:
            m['edge_flops_fraction_without_exits'] = sum(a - x for a, x, _ in exit_f) / total
    params = [r.get('edge_params') for r in results if r.get('edge_params') is not None]
    if params:
        m['edge_params_m'] = _mean(params) / 1e6
    return m


@METRICS.register_module()
class CommunicationMetric(BaseMetric):
    """Per-image uplink bytes, offload ratio, edge/cloud compute and modelled latency.

    Args:
        bandwidth_mbps (float | list[float]): uplink bandwidth(s) in Mbit/s (1e6 bit/s) for the
            modelled latency; one ``uplink_ms_at_*`` / ``latency_ms_at_*`` figure per value.
        rtt_ms (float): fixed round-trip delay added once per offloaded image.
        collect_device (str): 'cpu' or 'gpu', for collecting results across ranks.
        prefix (str, optional): metric-name prefix; defaults to ``'comm'``.
    """
    default_prefix: Optional[str] = 'comm'

    def __init__(self,
                 bandwidth_mbps: Union[float, Sequence[float]] = 10.0,
                 rtt_ms: float = 0.0,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if isinstance(bandwidth_mbps, (Real, np.number)) and not isinstance(bandwidth_mbps, bool):
            bandwidths = [bandwidth_mbps]
        elif isinstance(bandwidth_mbps, (list, tuple)) and len(bandwidth_mbps) > 0:
            bandwidths = list(bandwidth_mbps)
        else:
            raise TypeError('CommunicationMetric: bandwidth_mbps must be a positive number or a '
                            f'non-empty list of positive numbers, got {bandwidth_mbps!r}')
        self.bandwidths_mbps: List[float] = []
        for bw in bandwidths:
            if isinstance(bw, bool) or not isinstance(bw, (Real, np.number)) \
                    or not math.isfinite(float(bw)) or float(bw) <= 0:
                raise ValueError('CommunicationMetric: every bandwidth_mbps must be a finite '
                                 f'number > 0, got {bw!r}')
            if float(bw) not in self.bandwidths_mbps:
                self.bandwidths_mbps.append(float(bw))
        keys = [bandwidth_key(bw) for bw in self.bandwidths_mbps]
        if len(set(keys)) != len(keys):
            raise ValueError('CommunicationMetric: bandwidths that format to the same key: '
                             f'{self.bandwidths_mbps} -> {keys}')
        if isinstance(rtt_ms, bool) or not isinstance(rtt_ms, (Real, np.number)) \
                or not math.isfinite(float(rtt_ms)) or float(rtt_ms) < 0:
            raise ValueError(f'CommunicationMetric: rtt_ms must be a finite number >= 0, '
                             f'got {rtt_ms!r}')
        self.rtt_ms = float(rtt_ms)

    # ------------------------------------------------------------------ collection
    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Store the communication record of every sample (as a plain, picklable dict)."""
        for sample in data_samples:
            record = accounting.read(sample)
            if record is None:
                meta = sample.metainfo if hasattr(sample, 'metainfo') else sample
                which = meta.get('img_path', meta.get('img_id', '<unknown>')) \
                    if hasattr(meta, 'get') else '<unknown>'
                raise MissingCommRecordError(_MISSING_RECORD_MSG.format(which=repr(which)))
            d = record.to_dict()
            self.results.append(d)

    # ------------------------------------------------------------------ reduction
    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Reduce the per-image records to flat float figures (see the module docstring)."""
        logger = MMLogger.get_current_instance()
        n = len(results)
        if n == 0:
            logger.warning('CommunicationMetric: no records to evaluate.')
            return {}
        offl = [bool(r.get('offloaded', True)) for r in results]
        m: Dict[str, float] = {'num_images': float(n)}
        m.update(_offload_figures(results, offl))
        m.update(_byte_figures([r for r, o in zip(results, offl) if o]))
        m['bytes_per_image_mean'] = _mean(
            [r['payload_bytes'] if o else 0 for r, o in zip(results, offl)])
        m.update(_compute_figures(results, offl))
        edge_t = [r.get('edge_time_s') for r in results]
        cloud_t = [_cloud_value(r, o, 'cloud_time_s') for r, o in zip(results, offl)]
        codec_t = [r.get('codec_time_s') for r in results if r.get('codec_time_s') is not None]
        for key, vals in (('edge_time_ms', edge_t), ('cloud_time_ms', cloud_t),
                          ('codec_time_ms', codec_t)):
            vals = [v for v in vals if v is not None]
            if vals:
                m[key] = _mean(vals) * 1e3
        m.update(self._latency_figures(results, offl, edge_t, cloud_t))
        self._log_table(logger, m, results)
        return m

    def _latency_figures(self, results: List[dict], offl: List[bool], edge_t: list,
                         cloud_t: list) -> Dict[str, float]:
        """Modelled network time and end-to-end latency per bandwidth (module docstring)."""
        m: Dict[str, float] = {}
        have_times = all(v is not None for v in edge_t) and all(v is not None for v in cloud_t)
        for bw in self.bandwidths_mbps:
            uplink = [(r['payload_bytes'] * 8.0 / (bw * 1e6) * 1e3 + self.rtt_ms) if o else 0.0
                      for r, o in zip(results, offl)]
            m[f'uplink_ms_at_{bandwidth_key(bw)}'] = _mean(uplink)
            if have_times:
                m[f'latency_ms_at_{bandwidth_key(bw)}'] = _mean(
                    [(te + tc) * 1e3 + u for te, tc, u in zip(edge_t, cloud_t, uplink)])
        return m

    def _log_table(self, logger, m: Dict[str, float], results: List[dict]) -> None:
        from terminaltables import AsciiTable
        codecs: Dict[str, int] = {}
        for r in results:
            name = r.get('codec') or '<unnamed>'
            codecs[name] = codecs.get(name, 0) + 1
        rows = [['figure', 'value']]
        for k, v in m.items():
            rows.append([k, f'{int(v)}' if k == 'num_images' else f'{v:.4g}'])
        rows.append(['codecs', ', '.join(f'{k} x{v}' for k, v in codecs.items())])
        extra = f', rtt {self.rtt_ms:g} ms' if self.rtt_ms else ''
        logger.info(f'Communication cost (bandwidths {self.bandwidths_mbps} Mbit/s{extra}):\n'
                    + AsciiTable(rows).table)
