"""Online adaptation under distribution shift (CEMA for detection) as a test loop.

Select it in a config and ``tools/test.py CONFIG CHECKPOINT`` runs it::

    test_cfg = dict(type='OnlineAdaptationLoop', method='cema',
                    corruptions=[('gaussian_noise', 3), ('fog', 3)])

Per stream (one corruption at one severity, or the config's own test pipeline when
``corruptions`` is empty) the test set is streamed in a fixed seeded order, one edge batch at a
time, and for every batch, in this order:

1. **predict and score** with the parameters the edge has now: the whole dynamic system (edge
   exit + router + real bitstream to the cloud for offloaded images) and the edge exit alone,
   each into its own COCO evaluator. Nothing computed from this batch has touched the model yet;
2. **edge-only baselines** (``norm_stats``, ``tent``) adapt on the batch just scored;
3. **CEMA** (and the upload controls): the selector decides from the exit's uncertainty which
   images go up; each is encoded with a real image codec (its bytes counted) and sent as an
   IMAGE message to the edge's cloud state (:class:`~ecc_mmdet.adaptation.EdgeAdaptation` in
   this process, or a real server with ``remote``), which decodes it, has the teacher label it
   and queues it in its replay buffer;
4. every ``update_interval`` batches the cloud adapts its copy and the new normalisation
   parameters come down as a real PARAM_UPDATE message (bytes counted), which the edge checks and
   applies all-or-nothing.

How bytes are counted: *inference uplink* = the feature payloads of images the router offloaded
(as in every other evaluation); *adaptation uplink* = the encoded images the selector uploaded,
counted in full even when the same image was also offloaded (the cloud needs its pixels: the
teacher reads images and the edge layers being trained start at the image), as the image files
(not the 62 bytes of IMAGE framing around each); *downlink* = the PARAM_UPDATE messages. Streams
start from the checkpoint (``reset=True``, the default) or follow each other without reset
(continual mode).

Methods: ``none``, ``norm_stats`` (edge BN statistics), ``tent`` (edge entropy minimisation),
``cema`` (entropy-band selection + cloud), ``upload_all``, ``random`` (uniform upload at
``random_ratio``, e.g. CEMA's measured upload ratio). The three cloud methods differ only in what
they upload: on the edge they all re-estimate the batch-norm statistics from every image, as
CEMA's edge does (its batch renormalisation), which costs no upload, and the cloud sends down
only the affine parameters it learned (``edge_learner=None`` for a cloud-only variant that sends
the statistics too).
"""
import copy
import json
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop
from mmdet.registry import LOOPS, TASK_UTILS
from mmdet.structures import DetDataSample

from ecc_edge.codecs.bitstream import BitstreamError, ImageCodecId, ImageMeta
from ecc_edge.codecs.image_message import pack_image
from ...adaptation.cloud_state import EdgeAdaptation
from ...apis.evaluation import score_only_seen_images
from ...datasets.transforms.corruptions import add_corruption
from ...datasets.transforms.image_codec import CompressImage
from ...deployment.fingerprint import model_fingerprint
from ...evaluation.meter import DeploymentMeter
from ...deployment.param_update import apply_param_update
from ...deployment.pipeline import run_deployment
from ...deployment.sides import build_edge
from ...distillation import DetectionDistiller, resolve_path
from ...models.routers.features import top_k_entropy
from ...structures import comm_record
from ...utils.device import to_numpy
from ...errors import ConfigError

__all__ = ['OnlineAdaptationLoop', 'METHODS']

#: method -> (default selector, default edge learner, uses the cloud)
METHODS = {
    'none': (dict(type='UploadNone'), None, False),
    'norm_stats': (dict(type='UploadNone'), dict(type='NormStats'), False),
    'tent': (dict(type='UploadNone'), dict(type='Tent'), False),
    'cema': (dict(type='EntropySelector'), dict(type='NormStats'), True),
    'upload_all': (dict(type='UploadAll'), dict(type='NormStats'), True),
    'random': (None, dict(type='NormStats'), True),  # RandomUpload at random_ratio
}


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _coco_only(evaluator_cfg):
    cfgs = evaluator_cfg if isinstance(evaluator_cfg, (list, tuple)) else [evaluator_cfg]
    coco = [copy.deepcopy(c) for c in cfgs if 'CocoMetric' in str(c.get('type', ''))]
    if not coco:
        raise ConfigError('OnlineAdaptationLoop scores with COCO mAP: test_evaluator needs a '
                          "dict(type='CocoMetric', ...)")
    return coco


class _StreamTally:
    """What one stream accumulates: its evaluators and its image, byte and update counts."""

    def __init__(self, name: str, evaluators: tuple, skipped0: int):
        self.name = name
        self.system_eval, self.edge_eval, self.up_teacher, self.up_edge = evaluators
        self.meter = DeploymentMeter(measure_flops=False, estimate_rate=False)
        self.skipped0 = skipped0  # the cloud's count of uploads without pseudo labels
        self.n = self.uploads = self.up_adapt = self.up_infer = self.down = 0
        self.n_updates = self.refused = 0
        self.offloads: List[bool] = []
        self.entropies: List[float] = []
        self.uploaded_ids: list = []
        self.t0 = time.perf_counter()


@LOOPS.register_module()
class OnlineAdaptationLoop(BaseLoop):
    """Stream the test set once per corruption; predict, score, then adapt (module docstring).

    Args:
        runner, dataloader, evaluator: given by the Runner (``test_dataloader`` and
            ``test_evaluator`` of the config).
        method: one of :data:`METHODS`.
        corruptions: ``[(name, severity), ...]`` streams (``CorruptImage`` inserted after the
            image is loaded); empty: one stream through the config's own pipeline.
        reset: start every stream from the checkpoint (True) or go on (continual mode).
        order_seed: seed of the stream order (the same order for every method).
        num_images: stream only the first N images of the test set.
        selector: CEMA's upload selector (``TASK_UTILS``, e.g. ``EntropySelector``); the other
            methods ignore it (they are defined by what they upload).
        edge_learner, cloud: configs overriding the method's defaults (``NormStats``/``Tent``;
            ``CloudAdapter`` arguments).
        random_ratio: the upload probability of ``method='random'``.
        update_interval: cloud update rounds (and downlinks) every this many edge batches.
        upload_codec: ``CompressImage`` arguments of the uploaded images.
        downlink_half: send the parameters as float16 (half the downlink bytes).
        top_k: anchors of the exit's uncertainty (router and selection statistic).
        teacher_config, teacher_checkpoint: the cloud's teacher (default: the config's top-level
            ``teacher_config`` / ``teacher_checkpoint``), see ``DetectionDistiller``.
        out_file: results JSON, in the work dir (None: not written).
        log_interval: progress line every this many batches.
        remote: ``dict(url=..., token_file=..., edge_id=...)``: adapt through a real cloud
            server (``tools/serve_cloud.py --adapt``) instead of in this process; the edge
            re-registers with ``reset`` at every stream start.
    """

    def __init__(self, runner, dataloader, evaluator, method: str = 'cema',
                 corruptions: Sequence = (), reset: bool = True, order_seed: int = 0,
                 num_images: Optional[int] = None, selector: Optional[dict] = None,
                 edge_learner: Optional[dict] = None, cloud: Optional[dict] = None,
                 random_ratio: Optional[float] = None, update_interval: int = 1,
                 upload_codec: dict = dict(codec='webp', quality=90),
                 downlink_half: bool = False, top_k: int = 10,
                 teacher_config=None, teacher_checkpoint=None,
                 out_file: Optional[str] = 'online_adaptation.json', log_interval: int = 10,
                 remote: Optional[dict] = None):
        if method not in METHODS:
            raise ConfigError(f'OnlineAdaptationLoop.method {method!r} is not one of '
                              f'{", ".join(METHODS)}')
        if method == 'random' and random_ratio is None:
            raise ConfigError("OnlineAdaptationLoop: method='random' needs random_ratio (the "
                              'upload probability, e.g. the ratio CEMA uploaded)')
        if int(update_interval) < 1 or (num_images is not None and int(num_images) < 1):
            raise ConfigError('OnlineAdaptationLoop needs update_interval >= 1 and num_images '
                              '>= 1 (or None)')
        self.streams = [self._check_corruption(c) for c in corruptions] or [None]
        self.dataloader_cfg = copy.deepcopy(dataloader) if isinstance(dataloader, dict) else None
        if self.dataloader_cfg is None:
            raise ConfigError('OnlineAdaptationLoop builds one dataloader per corruption: give '
                              'test_dataloader as a config dict')
        super().__init__(runner, dataloader)
        self.evaluator_cfg = copy.deepcopy(runner.cfg.get('test_evaluator'))
        self.method, self.reset, self.order_seed = method, bool(reset), int(order_seed)
        self.num_images = None if num_images is None else int(num_images)
        sel_default, learner_default, self.uses_cloud = METHODS[method]
        if method == 'random':
            sel_default = dict(type='RandomUpload', ratio=random_ratio, seed=order_seed)
        # the controls are defined by what they upload: the selector setting is CEMA's only
        self.selector = TASK_UTILS.build(selector if selector and method == 'cema'
                                         else sel_default)
        learner = edge_learner or learner_default
        self.edge_learner = TASK_UTILS.build(learner) if learner else None
        self.cloud = TASK_UTILS.build(dict(type='CloudAdapter', **(cloud or {}))) \
            if self.uses_cloud else None
        self.update_interval, self.top_k = int(update_interval), int(top_k)
        self.codec = CompressImage(**upload_codec)
        self.downlink_half = bool(downlink_half)
        self.teacher_config, self.teacher_checkpoint = teacher_config, teacher_checkpoint
        self.out_file, self.log_interval = out_file, int(log_interval)
        if remote is not None and not (isinstance(remote, dict) and remote.get('url')):
            raise ConfigError('OnlineAdaptationLoop.remote: dict(url=..., token_file=..., '
                              f'edge_id=...) of a cloud server, got {remote!r}')
        self.remote = None if remote is None else dict(remote)
        self.cloud_side = self._remote_side = None
        self.results: List[Dict] = []
        #: (stream, img_id, sequence number of the edge parameters that predicted it), in order
        self.predicted_with: List[tuple] = []
        #: (stream, sequence number, image ids the update trained on)
        self.updates: List[tuple] = []

    @staticmethod
    def _check_corruption(c):
        if isinstance(c, dict):
            c = (c.get('corruption'), c.get('severity', 3))
        if not isinstance(c, (list, tuple)) or len(c) != 2:
            raise ConfigError(f'OnlineAdaptationLoop.corruptions: each entry is (name, severity) '
                              f'or dict(corruption=..., severity=...), got {c!r}')
        add_corruption([dict(type='LoadImageFromFile')], c[0], c[1])  # validates, clear errors
        return (str(c[0]), int(c[1]))

    # ------------------------------------------------------------------ setup
    def _build_distiller(self, model):
        distiller = DetectionDistiller(teacher_config=self.teacher_config,
                                       teacher_checkpoint=self.teacher_checkpoint,
                                       owner='OnlineAdaptationLoop')
        device = next(model.parameters()).device
        distiller.build(device=device, cfg=self.runner.cfg, logger=self.runner.logger)
        distiller.check_classes(model)
        self._check_class_names()
        return distiller

    def _check_class_names(self) -> None:
        """Same number of classes is not enough: the teacher's dataset must name the same
        classes in the same order as the stream's (when its config says)."""
        tcfg = self.teacher_config or self.runner.cfg.get('teacher_config')
        path = resolve_path(tcfg, 'OnlineAdaptationLoop') if isinstance(tcfg, str) else ''
        if not path:
            return
        meta = Config.fromfile(path).get('test_dataloader', {}).get('dataset', {}).get(
            'metainfo', {}) or {}
        theirs = meta.get('classes')
        ours = (self.dataloader.dataset.metainfo or {}).get('classes')
        if theirs is not None and ours is not None and tuple(theirs) != tuple(ours):
            raise ConfigError(f'OnlineAdaptationLoop: the teacher ({tcfg}) was trained on the '
                              f'classes {tuple(theirs)} but the stream has {tuple(ours)}; its '
                              'pseudo labels would name the wrong classes. Use a teacher '
                              'trained on the same classes, in the same order.')

    def _loader(self, stream):
        cfg = copy.deepcopy(self.dataloader_cfg)
        ds = cfg['dataset']
        if 'pipeline' not in ds:
            raise ConfigError('OnlineAdaptationLoop: test_dataloader.dataset has no pipeline to '
                              'put the corruption into (wrapped datasets are not supported)')
        if stream is not None:
            ds['pipeline'] = add_corruption(ds['pipeline'], stream[0], stream[1])
        if self.num_images is not None:
            ds['indices'] = self.num_images
        cfg['sampler'] = dict(type='DefaultSampler', shuffle=True, seed=self.order_seed)
        return self.runner.build_dataloader(cfg, seed=self.order_seed)

    def _evaluators(self, dataset):
        system = self.runner.build_evaluator(copy.deepcopy(self.evaluator_cfg))
        edge = self.runner.build_evaluator(_coco_only(self.evaluator_cfg))
        for ev in (system, edge):
            ev.dataset_meta = dataset.metainfo
        return system, edge

    # ------------------------------------------------------------------ run
    def run(self) -> Dict[str, float]:
        runner = self.runner
        model = _unwrap(runner.model)
        if getattr(model, 'edge_exit', None) is None or getattr(model, 'router', None) is None:
            raise ConfigError('OnlineAdaptationLoop adapts the edge exit of a dynamic split '
                              'detector (edge_exit + router), e.g. '
                              'configs/ecc_faster_rcnn_r18_synthetic_dynamic.py')
        # the teacher first: a config error shows before any calibration work
        distiller = self._build_distiller(model) if self.uses_cloud else None
        runner.call_hook('before_test')  # e.g. RouterCalibrationHook: the clean threshold
        runner.call_hook('before_test_epoch')
        model.eval()
        initial = copy.deepcopy(model.state_dict())
        edge_bytes = sum(t.numel() * t.element_size()
                         for t in build_edge(model).state_dict().values())
        metrics, self.results = {}, []
        self.predicted_with, self.updates = [], []
        self.seq = 0
        try:
            for k, stream in enumerate(self.streams):
                if self.reset or k == 0:
                    self._start_from(model, initial, distiller)
                res = self._run_stream(model, stream)
                res['edge_model_bytes'] = edge_bytes
                res['downlink_per_update_ratio'] = (res['downlink_bytes_per_update'] / edge_bytes
                                                    if res['num_updates'] else 0.0)
                self.results.append(res)
                for key in ('edge_mAP', 'system_mAP', 'upload_ratio', 'offload_ratio',
                            'uplink_bytes_per_image', 'downlink_bytes_per_image'):
                    metrics[f'{res["stream"]}/{key}'] = res[key]
        finally:  # leave the model as loaded (another run may follow), also after an error
            model.load_state_dict(initial)
            model.eval()
        self._write_results()
        runner.call_hook('after_test_epoch', metrics=metrics)
        runner.call_hook('after_test')
        return metrics

    def _start_from(self, model, initial: dict, distiller) -> None:
        """Back to the checkpoint: model, sequence numbers, selector, learners."""
        model.load_state_dict(initial)
        self.seq, self.last_seq = 0, -1
        self.selector.reset()
        if self.edge_learner is not None:
            self.edge_learner.attach(model)
        if self.cloud is not None:
            self.cloud_side = self._cloud_side(model, distiller)

    def _cloud_side(self, model, distiller):
        """This edge's state in the cloud, from the start: in this process, or a server's."""
        if self.remote is None:
            per_round = int(self.dataloader_cfg.get('batch_size', 1)) * self.update_interval
            return EdgeAdaptation(model, distiller, self.cloud, model_fingerprint(model),
                                  affine_only=self.edge_learner is not None,
                                  half=self.downlink_half, max_pending=max(64, per_round))
        if self._remote_side is None:
            from ...adaptation.remote import RemoteEdgeAdaptation
            self._remote_side = RemoteEdgeAdaptation(fingerprint=model_fingerprint(model),
                                                     **self.remote)
        self._remote_side.reset()
        return self._remote_side

    def _write_results(self) -> None:
        if not self.out_file:
            return
        path = osp.join(self.runner.work_dir, self.out_file)
        with open(path, 'w') as fh:
            json.dump(dict(method=self.method, reset=self.reset, streams=self.results), fh,
                      indent=1)
        self.runner.logger.info(f'online adaptation results written to {path}')

    def _upload(self, image: torch.Tensor, sample, fingerprint: bytes):
        """One image (CHW uint8, as the pipeline made it) -> (its IMAGE message, the file's
        bytes)."""
        hwc = np.ascontiguousarray(to_numpy(image.permute(1, 2, 0)))
        file_bytes = self.codec.encode(hwc).tobytes()
        msg = pack_image(file_bytes, ImageCodecId[self.codec.codec.upper()], hwc.shape,
                         ImageMeta.from_metainfo(sample.metainfo), fingerprint)
        return msg, len(file_bytes)

    def _run_stream(self, model, stream) -> Dict:
        """One stream, batch by batch in the order of the module docstring."""
        name = 'clean' if stream is None else f'{stream[0]}@{stream[1]}'
        loader = self._loader(stream)
        dataset = loader.dataset
        system_eval, edge_eval = self._evaluators(dataset)
        # the supervision's quality: the teacher's and the edge's detections on the uploads
        up_teacher, up_edge = (self.runner.build_evaluator(_coco_only(self.evaluator_cfg))
                               for _ in range(2))
        for ev in (up_teacher, up_edge):
            ev.dataset_meta = dataset.metainfo
        st = _StreamTally(name, (system_eval, edge_eval, up_teacher, up_edge),
                          getattr(self.cloud_side, 'num_skipped', 0))
        for b, data in enumerate(loader):
            raw = list(data['inputs'])
            batch = model.data_preprocessor(data, False)
            inputs, samples = batch['inputs'], batch['data_samples']
            keys = [s.metainfo.get('img_id', s.metainfo.get('img_path')) for s in samples]
            # 1. predict and score with the current parameters (nothing learned from this batch)
            edge, entropy = self._predict_and_score(model, data, inputs, samples, keys, st)
            # 2. edge-only adaptation on the batch just scored
            if self.edge_learner is not None:
                self.edge_learner.step(model, inputs)
            # 3. upload selection and the cloud; 4. update round and downlink
            if self.cloud is not None:
                self._upload_selected(model, raw, samples, keys, edge, entropy, st)
                if (b + 1) % self.update_interval == 0:
                    self._update_round(model, st)
            if self.log_interval and (b + 1) % self.log_interval == 0:
                self.runner.logger.info(
                    f'[{self.method} {name}] {st.n}/{len(dataset)} images, uploaded '
                    f'{st.uploads}, {st.n_updates} updates, '
                    f'{time.perf_counter() - st.t0:.0f} s')
        return self._stream_result(stream, st)

    def _predict_and_score(self, model, data, inputs, samples, keys, st: _StreamTally):
        """The system's and the edge exit's detections of a batch, into their evaluators;
        returns (edge detections, the exit's uncertainty per image)."""
        with torch.no_grad():
            system = run_deployment(model, inputs,
                                    [DetDataSample(metainfo=s.metainfo) for s in samples],
                                    meter=st.meter)
            f = model.edge_features(inputs)
            exits = model.run_exits(f, samples)
            edge = [model.finish_on_edge(DetDataSample(metainfo=s.metainfo), r)
                    for s, r in zip(samples, exits.results)]
            entropy = top_k_entropy(exits, self.top_k)
        st.system_eval.process(data_samples=system, data_batch=data)
        st.edge_eval.process(data_samples=edge, data_batch=data)
        for key, r in zip(keys, system):
            rec = comm_record.read(r)
            st.offloads.append(bool(rec.offloaded))
            st.up_infer += rec.payload_bytes if rec.offloaded else 0
            self.predicted_with.append((st.name, key, max(self.last_seq, 0)))
        st.entropies += entropy.tolist()
        st.n += len(samples)
        return edge, entropy

    def _upload_selected(self, model, raw, samples, keys, edge, entropy,
                         st: _StreamTally) -> None:
        """Send the images the selector chose to the cloud as one upload of IMAGE messages
        (the cloud labels them as one batch)."""
        chosen = [i for i, c in enumerate(self.selector.select(entropy, keys).tolist()) if c]
        if not chosen:
            return
        fingerprint = model_fingerprint(model)
        messages = []
        for i in chosen:
            msg, size = self._upload(raw[i], samples[i], fingerprint)
            st.up_adapt += size
            messages.append(msg)
        labels = self.cloud_side.upload(messages, [keys[i] for i in chosen])
        st.uploads += len(chosen)
        st.up_teacher.process(data_samples=labels)
        st.up_edge.process(data_samples=[edge[i] for i in chosen])
        st.uploaded_ids += [keys[i] for i in chosen]

    def _update_round(self, model, st: _StreamTally) -> None:
        """The cloud adapts; its parameters go down as a PARAM_UPDATE the edge may refuse."""
        msg, used = self.cloud_side.round()
        if msg is None:
            return
        self.seq += 1
        st.down += len(msg)  # sent, whether or not the edge accepts it
        try:
            self.last_seq = apply_param_update(model, msg, self.last_seq)
        except BitstreamError as e:  # the edge keeps its last good parameters
            st.refused += 1
            self.runner.logger.warning(f'[{self.method} {st.name}] update {self.seq} refused: '
                                       f'{e}')
        else:
            st.n_updates += 1
            self.updates.append((st.name, self.seq, used))

    def _score_stream(self, st: _StreamTally):
        """-> (system metrics, edge metrics, mAPs on the uploaded images)."""
        seen = list(dict.fromkeys(key for s, key, _ in self.predicted_with if s == st.name))
        for ev in (st.system_eval, st.edge_eval):  # a subset (num_images) is scored as a subset
            score_only_seen_images(ev, seen)
        sys_metrics = st.system_eval.evaluate(st.n)
        edge_metrics = st.edge_eval.evaluate(st.n)
        on_uploads = {}
        if st.uploaded_ids:
            for key, ev in (('teacher_mAP_on_uploads', st.up_teacher),
                            ('edge_mAP_on_uploads', st.up_edge)):
                score_only_seen_images(ev, list(dict.fromkeys(st.uploaded_ids)))
                on_uploads[key] = 100 * float(ev.evaluate(len(st.uploaded_ids)).get(
                    'coco/bbox_mAP', 0.0))
        return sys_metrics, edge_metrics, on_uploads

    def _stream_result(self, stream, st: _StreamTally) -> Dict:
        sys_metrics, edge_metrics, on_uploads = self._score_stream(st)
        n, offloads, entropies = st.n, st.offloads, st.entropies
        q = max(1, n // 4)
        return dict(
            stream=st.name, method=self.method, corruption=None if stream is None else stream[0],
            severity=0 if stream is None else stream[1], num_images=n,
            edge_mAP=100 * float(edge_metrics.get('coco/bbox_mAP', 0.0)),
            system_mAP=100 * float(sys_metrics.get('coco/bbox_mAP', 0.0)),
            upload_ratio=st.uploads / max(n, 1), num_uploads=st.uploads,
            uplink_adapt_bytes_per_image=st.up_adapt / max(n, 1),
            uplink_infer_bytes_per_image=st.up_infer / max(n, 1),
            uplink_bytes_per_image=(st.up_adapt + st.up_infer) / max(n, 1),
            downlink_bytes_per_image=st.down / max(n, 1), num_updates=st.n_updates,
            refused_updates=st.refused,
            downlink_bytes_per_update=(st.down / (st.n_updates + st.refused)
                                       if st.n_updates + st.refused else 0.0),
            offload_ratio=float(np.mean(offloads)) if offloads else 0.0,
            offload_ratio_first_quarter=float(np.mean(offloads[:q])) if offloads else 0.0,
            offload_ratio_last_quarter=float(np.mean(offloads[-q:])) if offloads else 0.0,
            mean_entropy=float(np.mean(entropies)) if entropies else 0.0,
            entropy_quantiles=dict(zip(('p10', 'p25', 'p50', 'p75', 'p90'), np.quantile(
                entropies, [.1, .25, .5, .75, .9]).tolist())) if entropies else {},
            uploads_without_pseudo_labels=getattr(self.cloud_side, 'num_skipped', 0) -
            st.skipped0,
            **on_uploads,
            selector=self.selector.state(), seconds=time.perf_counter() - st.t0)
