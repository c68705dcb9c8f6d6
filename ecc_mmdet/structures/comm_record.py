"""Byte accounting: the one record of what crossed the network for one image.

Whoever produces an uplink transmission (the split detector's edge side, the JPEG cloud-only
baseline transform; the cloud-only accounting fills in the cloud's share) stores a :class:`CommRecord` in the data sample's metainfo under
:data:`COMM_KEY`; :class:`~ecc_mmdet.evaluation.CommunicationMetric` reads it back. Nothing else
counts bytes, so every method is measured the same way.
"""
from dataclasses import asdict, dataclass
from typing import Optional

COMM_KEY = 'ecc_comm'


@dataclass
class CommRecord:
    """Per-image communication and compute figures.

    payload_bytes:  real uplink bytes, ``len(payload)`` (0 when the image never left the edge)
    header_bytes:   the part of payload_bytes that is framing (header + checksum), not body
    estimated_bits: the entropy model's estimate of the body size (-sum log2 p), None when the
                    codec has no model (JPEG)
    codec:          name of the method, e.g. 'entropy_bottleneck', 'quantize_8bit', 'jpeg_q90'
    offloaded:      whether the image was sent to the cloud at all
    tier:           where its detections were made: 'cloud', or an edge exit ('edge_main',
                    'edge_extension') for images finished on the edge
    edge_flops / cloud_flops: FLOPs spent per image on each side (None when not measured)
    exit_flops:     the part of edge_flops spent by the edge exits and the router
    edge_params:    parameter count of everything that runs on the edge
    edge_time_s / cloud_time_s / codec_time_s: wall time per image on this machine
    """
    payload_bytes: int
    header_bytes: int = 0
    estimated_bits: Optional[float] = None
    codec: str = ''
    offloaded: bool = True
    tier: str = 'cloud'
    edge_flops: Optional[float] = None
    cloud_flops: Optional[float] = None
    exit_flops: Optional[float] = None
    edge_params: Optional[int] = None
    edge_time_s: Optional[float] = None
    cloud_time_s: Optional[float] = None
    codec_time_s: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'CommRecord':
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def attach(data_sample, record: CommRecord):
    """Store ``record`` on a DetDataSample (metainfo) so it reaches the evaluator."""
    data_sample.set_metainfo({COMM_KEY: record.to_dict()})


def read(sample) -> Optional[CommRecord]:
    """The record of a DetDataSample or of its ``to_dict()`` form (what evaluators receive)."""
    meta = sample.metainfo if hasattr(sample, 'metainfo') else sample
    d = meta.get(COMM_KEY)
    return None if d is None else CommRecord.from_dict(d)
