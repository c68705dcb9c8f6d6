"""The cloud's online-adaptation state, one per edge: what a server keeps between requests.

An edge uploads selected images as IMAGE messages (:mod:`ecc_edge.codecs.image_message`); the
cloud decodes each exactly as :class:`~ecc_mmdet.datasets.transforms.CompressImage` does, lets
its :class:`~.learners.CloudAdapter` label and queue it, and on every update round trains the
edge's copy and issues the next PARAM_UPDATE (:mod:`ecc_mmdet.deployment.param_update`). The
sequence number of the latest update says which parameters the edge may run: asking for
updates after a number the cloud never issued is refused (:class:`UpdateAheadError`).

Several edges share one teacher; its batch-norm statistics follow each edge's uploads
(``adapt_teacher``), so every :class:`EdgeAdaptation` keeps its own copy of them and swaps it
in around its own work. :class:`AdaptationHub` keys the states by edge id, serialises every
call with one lock and writes an edge's state atomically after each change, so a restarted
cloud continues bit-identically.
"""
import contextlib
import os
import os.path as osp
import re
import tempfile
import threading
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from mmdet.registry import TASK_UTILS
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ecc_edge.codecs.bitstream import (BitstreamError, CorruptedBitstreamError,
                                        ModelMismatchError)
from ecc_edge.codecs.image_message import unpack_image
from ..datasets.transforms.image_codec import decode_image
from ..deployment.fingerprint import model_fingerprint
from ..deployment.param_update import edge_norm_modules, make_param_update
from ..errors import ConfigError, UnknownEdgeError, UploadLimitError
from .learners import CloudAdapter, load_running_stats, running_stats

__all__ = ['UpdateAheadError', 'UploadLimitError', 'UnknownEdgeError', 'EdgeAdaptation',
           'AdaptationHub', 'decode_upload', 'EDGE_ID_PATTERN']

#: what an edge id may be (it names the edge's state file)
EDGE_ID_PATTERN = re.compile(r'[A-Za-z0-9._-]{1,64}')
_STATE_VERSION = 1


class UpdateAheadError(BitstreamError):
    """An edge claims parameters (a sequence number) past the latest update the cloud issued:
    it runs parameters this cloud never made, e.g. after the cloud lost or reset its state."""


def decode_upload(message, fingerprint: bytes, img_id) -> Tuple[torch.Tensor, DetDataSample]:
    """An uploaded IMAGE message -> (CHW uint8 image as the cloud decodes it, a data sample
    with its meta and ``img_id``); only BitstreamError subclasses for bad input."""
    msg = unpack_image(message, expected_fingerprint=fingerprint)
    (h, w), meta = msg.shape[:2], msg.meta
    if meta.img_shape[0] > h or meta.img_shape[1] > w:
        raise CorruptedBitstreamError(f'IMAGE message: img_shape {meta.img_shape} does not fit '
                                      f'in the uploaded image {msg.shape}')
    try:
        hwc = decode_image(msg.file_bytes, (h, w))
    except ValueError as e:
        raise CorruptedBitstreamError(f'IMAGE message ({msg.codec.name}): {e}') from e
    image = torch.from_numpy(hwc.transpose(2, 0, 1).copy())
    return image, DetDataSample(metainfo=dict(meta.to_metainfo(), img_id=img_id))


def _norm_state(model) -> Dict[str, torch.Tensor]:
    """Every tensor (parameters, statistics, counters) of the edge normalisation layers."""
    return {f'{name}.{k}': v.detach().cpu().clone()
            for name, mod in edge_norm_modules(model).items()
            for k, v in mod.state_dict().items()}


@torch.no_grad()
def _load_norm_state(model, state: Dict[str, torch.Tensor]) -> None:
    for name, mod in edge_norm_modules(model).items():
        for k, v in mod.state_dict(keep_vars=True).items():
            v.copy_(state[f'{name}.{k}'])


class EdgeAdaptation:
    """One edge's adaptation state in the cloud: a :class:`CloudAdapter` on its own copy of the
    full model, the teacher's per-edge norm statistics, the sequence number and latest update.

    Args:
        model: the base model (the edge's as deployed); the adapter trains a copy.
        distiller: holds the teacher (shared between edges).
        adapter: this edge's own CloudAdapter (attached here).
        base_fingerprint: the edge's fingerprint; uploads and updates carry it.
        affine_only: updates carry only the norm layers' affine parameters (an edge that
            re-estimates its statistics itself).
        half: updates as float16.
        max_pending: uploads that may wait for a round (:class:`UploadLimitError` beyond).
    """

    def __init__(self, model, distiller, adapter: CloudAdapter, base_fingerprint: bytes,
                 affine_only: bool = True, half: bool = False, max_pending: int = 64):
        if int(max_pending) < 1:
            raise ConfigError(f'EdgeAdaptation: max_pending must be >= 1, got {max_pending}')
        self.adapter, self.distiller = adapter, distiller
        self.base_fingerprint = bytes(base_fingerprint)
        self.affine_only, self.half, self.max_pending = bool(affine_only), bool(half), \
            int(max_pending)
        adapter.attach(model, distiller)
        self.teacher_stats = running_stats(distiller.teacher)
        self.seq, self.latest = 0, None
        #: id(decoded image) -> (image, its IMAGE message): what the state file keeps of it
        self._messages: Dict[int, tuple] = {}

    @property
    def num_skipped(self) -> int:
        """Uploads kept out of training (the teacher found nothing in them)."""
        return self.adapter.num_skipped

    @contextlib.contextmanager
    def _own_teacher_stats(self):
        """The shared teacher with this edge's statistics for the duration."""
        teacher = self.distiller.teacher
        shared = running_stats(teacher)
        load_running_stats(teacher, self.teacher_stats)
        try:
            yield teacher
        finally:
            self.teacher_stats = running_stats(teacher)
            load_running_stats(teacher, shared)

    def upload(self, messages: Sequence[bytes], img_ids: Sequence) -> List[DetDataSample]:
        """IMAGE messages (one upload: the images an edge batch selected) -> the teacher's
        detections of each (original-image coordinates); the images wait, labelled, for the
        next round. The teacher labels them as one batch: its norm statistics are re-estimated
        on the batch, as CEMA's cloud does, not on single images."""
        if len(messages) != len(img_ids) or not messages:
            raise ValueError(f'an upload holds one or more images, each with its id; got '
                             f'{len(messages)} messages and {len(img_ids)} ids')
        if len(self.adapter.pending) + len(messages) > self.max_pending:
            raise UploadLimitError(f'{len(self.adapter.pending)} uploads already wait for an '
                                   f'update round and the per-edge limit is '
                                   f'{self.max_pending}: run a round first')
        decoded = [decode_upload(m, self.base_fingerprint, i) for m, i in zip(messages, img_ids)]
        with self._own_teacher_stats():
            scored = self.adapter.receive([d[0] for d in decoded], [d[1] for d in decoded])
        for (image, _), message in zip(decoded, messages):
            self._messages[id(image)] = (image, bytes(message))
        return scored

    def round(self) -> Tuple[Optional[bytes], Set]:
        """One update round -> (PARAM_UPDATE bytes, the image ids it trained on); (None,
        set()) when there was nothing to learn yet."""
        used = self.adapter.adapt()
        if not used:
            return None, set()
        update = make_param_update(self.adapter.model, self.seq + 1, self.base_fingerprint,
                                   half=self.half, affine_only=self.affine_only)
        self.seq, self.latest = self.seq + 1, update
        return update, used

    def update_after(self, seq: int) -> Optional[bytes]:
        """The latest update when it is newer than ``seq`` (the edge's current), None when the
        edge has it; :class:`UpdateAheadError` when ``seq`` is past the latest issued."""
        if int(seq) > self.seq:
            raise UpdateAheadError(f'the edge runs update {seq}, but this cloud issued only '
                                   f'{self.seq}: re-register the edge (reset) and restart it '
                                   'from its base parameters')
        return None if int(seq) == self.seq else self.latest

    # ------------------------------------------------------------------ persistence
    def _item_state(self, item) -> dict:
        image, sample = item
        labels = {k: v.detach().cpu() for k, v in sample.gt_instances.items()}
        return dict(message=self._messages[id(image)][1], img_id=sample.metainfo['img_id'],
                    labels=labels)

    def _item(self, state: dict) -> tuple:
        image, sample = decode_upload(state['message'], self.base_fingerprint, state['img_id'])
        sample.gt_instances = InstanceData(**state['labels'])
        self._messages[id(image)] = (image, state['message'])
        return image, sample

    def state_dict(self) -> dict:
        """Everything needed to continue identically after a restart (plain tensors, bytes
        and numbers: ``torch.load(weights_only=True)`` reads it)."""
        a = self.adapter
        live = {id(img) for img, _ in list(a.pending) + list(a.buffer.items)}
        self._messages = {k: v for k, v in self._messages.items() if k in live}
        return dict(
            version=_STATE_VERSION, fingerprint=self.base_fingerprint, seq=self.seq,
            latest=self.latest, model_norm=_norm_state(a.model),
            optimizer=a.optimizer.state_dict(), generator=a.generator.get_state(),
            num_skipped=a.num_skipped, teacher_stats=self.teacher_stats,
            pending=[self._item_state(i) for i in a.pending],
            buffer=[self._item_state(i) for i in a.buffer.items])

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s copy (ModelMismatchError: another base model)."""
        if state.get('version') != _STATE_VERSION:
            raise ConfigError(f'adaptation state of version {state.get("version")}, this code '
                              f'reads {_STATE_VERSION}: start the edge afresh (reset)')
        if bytes(state['fingerprint']) != self.base_fingerprint:
            raise ModelMismatchError(
                f'the saved adaptation state is for the model {bytes(state["fingerprint"]).hex()}'
                f', this cloud holds {self.base_fingerprint.hex()}: use another state dir or '
                'reset the edge')
        a = self.adapter
        _load_norm_state(a.model, state['model_norm'])
        a.optimizer.load_state_dict(state['optimizer'])
        a.generator.set_state(state['generator'])
        a.num_skipped = int(state['num_skipped'])
        self.teacher_stats = {k: v.clone() for k, v in state['teacher_stats'].items()}
        self._messages = {}
        a.pending = [self._item(s) for s in state['pending']]
        a.buffer.items.clear()
        a.buffer.items.extend(self._item(s) for s in state['buffer'])
        self.seq, self.latest = int(state['seq']), state['latest']


def _write_atomically(path: str, state: dict) -> None:
    """``state`` to ``path`` so that a crash leaves the old file or the new one, never a part."""
    d = osp.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=osp.basename(path) + '.', suffix='.tmp', dir=d)
    try:
        with os.fdopen(fd, 'wb') as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)


class AdaptationHub:
    """The cloud's per-edge states, keyed by edge id, persisted atomically.

    Args:
        model, distiller: the base model every edge starts from and the (shared) teacher.
        adapter_cfg: ``CloudAdapter`` arguments (``TASK_UTILS``), one adapter per edge.
        state_dir: where ``<edge_id>.pt`` files live (None: in memory only); the states found
            there are loaded, so a restarted cloud continues where it stopped.
        max_edges: edges it accepts (:class:`UploadLimitError` beyond).
        max_pending, affine_only, half: of each :class:`EdgeAdaptation`.
    """

    def __init__(self, model, distiller, adapter_cfg: Optional[dict] = None,
                 state_dir: Optional[str] = None, max_edges: int = 16, max_pending: int = 64,
                 affine_only: bool = True, half: bool = False):
        if int(max_edges) < 1:
            raise ConfigError(f'AdaptationHub: max_edges must be >= 1, got {max_edges}')
        self.model, self.distiller = model, distiller
        self.adapter_cfg = dict(type='CloudAdapter', **(adapter_cfg or {}))
        self.state_dir, self.max_edges = state_dir, int(max_edges)
        self.edge_kw = dict(affine_only=affine_only, half=half, max_pending=max_pending)
        self.fingerprint = model_fingerprint(model)
        self.edges: Dict[str, EdgeAdaptation] = {}
        self._lock = threading.RLock()
        if state_dir is not None:
            os.makedirs(state_dir, exist_ok=True)
            for name in sorted(os.listdir(state_dir)):
                edge_id = name[:-len('.pt')]
                if name.endswith('.pt') and EDGE_ID_PATTERN.fullmatch(edge_id):
                    state = torch.load(osp.join(state_dir, name), map_location='cpu',
                                       weights_only=True)
                    self.edges[edge_id] = self._new_edge()
                    self.edges[edge_id].load_state_dict(state)

    def _new_edge(self) -> EdgeAdaptation:
        adapter = TASK_UTILS.build(self.adapter_cfg)
        return EdgeAdaptation(self.model, self.distiller, adapter, self.fingerprint,
                              **self.edge_kw)

    def _edge(self, edge_id) -> EdgeAdaptation:
        edge = self.edges.get(edge_id) if isinstance(edge_id, str) else None
        if edge is None:
            raise UnknownEdgeError(f'edge {edge_id!r} is not registered with this cloud: '
                                   'register it first')
        return edge

    def _save(self, edge_id: str) -> None:
        if self.state_dir is not None:
            _write_atomically(osp.join(self.state_dir, f'{edge_id}.pt'),
                              self.edges[edge_id].state_dict())

    def register(self, edge_id: str, fingerprint: bytes, reset: bool = False) -> dict:
        """Add an edge (idempotent: a known edge keeps its state unless ``reset``) ->
        ``dict(edge_id=..., seq=...)``; ModelMismatchError for an edge of another base model."""
        if not isinstance(edge_id, str) or not EDGE_ID_PATTERN.fullmatch(edge_id):
            raise ValueError(f'edge id {edge_id!r}: 1..64 characters of [A-Za-z0-9._-]')
        if bytes(fingerprint) != self.fingerprint:
            raise ModelMismatchError(
                f'edge {edge_id!r} runs the model {bytes(fingerprint).hex()}, this cloud adapts '
                f'{self.fingerprint.hex()}: deploy the edge and the cloud from one checkpoint')
        with self._lock:
            if edge_id not in self.edges or reset:
                if edge_id not in self.edges and len(self.edges) >= self.max_edges:
                    raise UploadLimitError(f'this cloud adapts at most {self.max_edges} edges')
                self.edges[edge_id] = self._new_edge()
                self._save(edge_id)
            return dict(edge_id=edge_id, seq=self.edges[edge_id].seq)

    def upload(self, edge_id, messages: Sequence[bytes], img_ids: Sequence
               ) -> List[DetDataSample]:
        with self._lock:
            out = self._edge(edge_id).upload(messages, img_ids)
            self._save(edge_id)
            return out

    def round(self, edge_id) -> Tuple[Optional[bytes], Set]:
        with self._lock:
            out = self._edge(edge_id).round()
            self._save(edge_id)
            return out

    def update_after(self, edge_id, seq: int) -> Optional[bytes]:
        with self._lock:
            return self._edge(edge_id).update_after(seq)

    def edge_seq(self, edge_id) -> int:
        with self._lock:
            return self._edge(edge_id).seq
