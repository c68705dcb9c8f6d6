"""An edge's adaptation state held by a real cloud server (``tools/serve_cloud.py --adapt``):
the same ``upload`` / ``round`` as the in-process
:class:`~ecc_mmdet.adaptation.cloud_state.EdgeAdaptation`, over HTTP.

``OnlineAdaptationLoop(remote=dict(url=..., token_file=..., edge_id=...))`` uses it, so the
loop's numbers through a server are the in-process ones: the server runs the same
``EdgeAdaptation`` on the same IMAGE messages, its teacher's detections come back unrounded, and
each round names the image ids it trained on (``Ecc-Trained-On-Ids``).
"""
import os
from typing import List, Optional, Sequence, Set, Tuple

import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ecc_edge.client import CloudClient, CloudRequestError, check_token
from ecc_edge.codecs.image_message import unpack_image
from ..errors import ConfigError

__all__ = ['RemoteEdgeAdaptation']


def _read_token(token_file: Optional[str]) -> Optional[str]:
    """From ``token_file``, else ``ECC_SERVE_TOKEN``; None: no token (a server started with
    ``--insecure-no-auth``)."""
    if token_file:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f'cannot read the token file: {e}') from None
        if not token:
            raise ConfigError(f'token file {token_file} is empty')
    else:
        token = os.environ.get('ECC_SERVE_TOKEN', '').strip() or None
    try:
        return None if token is None else check_token(token)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _sample(detections, metainfo: dict) -> DetDataSample:
    """The server's JSON detections -> a DetDataSample as the in-process cloud returns it."""
    out = DetDataSample(metainfo=metainfo)
    out.pred_instances = InstanceData(
        bboxes=torch.tensor([d['bbox'] for d in detections], dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor([d['score'] for d in detections], dtype=torch.float32),
        labels=torch.tensor([d['label'] for d in detections], dtype=torch.int64))
    return out


class RemoteEdgeAdaptation:
    """One edge's adaptation state on a cloud server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        token_file: a file holding the bearer token (else ``ECC_SERVE_TOKEN``; neither: none).
        edge_id: this edge's id on the server (``[A-Za-z0-9._-]{1,64}``).
        fingerprint: the edge model's fingerprint (the server refuses another base model).
        timeout: seconds per HTTP read/write (a round trains: give it time).
        retry_for: seconds an unanswered request keeps being retried (same request id).
    """

    def __init__(self, url: str, token_file: Optional[str] = None, edge_id: str = 'edge-0',
                 fingerprint: bytes = b'', timeout: float = 300.0, retry_for: float = 60.0):
        self.edge_id, self.fingerprint = str(edge_id), bytes(fingerprint)
        self.client = CloudClient(url, _read_token(token_file), timeout=timeout,
                                  retry_for=retry_for, concurrency=1)
        self.seq = 0
        #: uploads the cloud kept out of training (its teacher found nothing in them)
        self.num_skipped = 0

    def __repr__(self) -> str:
        return f'RemoteEdgeAdaptation({self.client.base_url!r}, edge_id={self.edge_id!r})'

    def reset(self) -> dict:
        """Start afresh on the server (a new stream): re-register with ``reset``."""
        reply = self.client.register_edge(self.edge_id, self.fingerprint, reset=True)
        self.seq, self.num_skipped = int(reply['seq']), int(reply.get('num_skipped', 0))
        return reply

    def upload(self, messages: Sequence[bytes], img_ids: Sequence) -> List[DetDataSample]:
        """IMAGE messages (one edge batch's selection) -> the teacher's detections of each
        (original-image coordinates)."""
        if any(isinstance(i, bool) or not isinstance(i, int) for i in img_ids):
            raise ConfigError(f'adaptation through a server needs integer image ids (COCO '
                              f'img_id), got {list(img_ids)!r}')
        reply = self.client.upload_for_adaptation(self.edge_id, messages, img_ids)
        if len(reply.get('detections') or ()) != len(messages):
            raise CloudRequestError(200, 'BadResponse', f'{len(messages)} images uploaded, '
                                    'the answer does not hold as many detection lists')
        self.num_skipped = int(reply.get('num_skipped', self.num_skipped))
        # the metainfo from the edge's own messages, as the cloud decodes it
        return [_sample(dets, dict(unpack_image(m).meta.to_metainfo(), img_id=i))
                for m, i, dets in zip(messages, img_ids, reply['detections'])]

    def round(self) -> Tuple[Optional[bytes], Set]:
        """One update round on the server -> (PARAM_UPDATE bytes, the image ids it trained
        on); (None, set()) when there was nothing to learn yet."""
        answer = self.client.adapt_round(self.edge_id)
        if answer is None:
            return None, set()
        self.seq = answer.seq
        return answer.data, set(answer.trained_on)

    def close(self) -> None:
        self.client.close()
