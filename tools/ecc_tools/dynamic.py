"""Dynamic edge-cloud inference benchmark: exits + routers, swept over offload ratios.

The engine of ``tools/benchmark_dynamic.py`` (targets, tables and plots live with the tools).
Every image of the evaluation split runs through the real deployment path twice -- once with
every image kept on the edge exit, once with every image offloaded through the feature bitstream
-- which gives each image's two possible results, bytes and FLOPs. Any routing is then scored
exactly by picking each image's COCO matches from one of the two sets
(:mod:`ecc_mmdet.evaluation.routing`). Thresholds are calibrated on the config's calibration split
(the synthetic set's held-out ``calib`` images: neither trained on nor evaluated), on other images
of it than those the learned router is fitted on; never on the evaluation split.
"""
import copy
import os
import os.path as osp
import pickle
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from mmengine.dataset import pseudo_collate

from ecc_mmdet.apis import build_detector, build_test_dataset, evaluate_detector, load_config
from ecc_mmdet.datasets.transforms import add_corruption, add_image_codec_baseline
from ecc_mmdet.deployment.calibration import (check_calibration_split,
                                              score_maps_from_predictions, tier_predictions)
from ecc_mmdet.evaluation.bootstrap import ImageBootstrap
from ecc_mmdet.utils import ConfigError
from ecc_mmdet.evaluation.routing import compose, found_objects, missed_objects, per_image_ap
from ecc_mmdet.models.routers import (BaseRouter, EmptyExitRouter, EntropyRouter, LearnedRouter,
                                      RandomRouter, ScoreBandRouter, ShiftRouter,
                                      exit_fingerprint, threshold_for_ratio)

#: the targets of the dynamic-inference issue
TARGET_MAP_DROP_AT_HALF = 1.0   # at 50 % finished on the edge, mAP >= all-cloud - 1.0
TARGET_BYTES_FRACTION = 0.5     # best point: <= 1/2 the all-cloud bytes ...
TARGET_MAP_LOSS = 1.0           # ... for <= 1.0 mAP loss
MISSED_SCORE_THR = 0.3         # an object counts as found by a detection scoring >= this
HEURISTIC_ROUTERS = {
    'random': lambda: RandomRouter(seed=0, threshold=0.5),
    'score band': lambda: ScoreBandRouter(low=0.2, high=0.6, threshold=0.0),
    'entropy': lambda: EntropyRouter(top_k=10, threshold=0.5),
    'empty exit': lambda: EmptyExitRouter(top_k=10, target_offload_ratio=0.5),
    'shift': lambda: ShiftRouter(top_k=10, target_offload_ratio=0.5),
    'shift, no empty': lambda: ShiftRouter(top_k=10, flag_empty=False, target_offload_ratio=0.5),
}
#: the learned routers fitted on the held-out images: LearnedRouter arguments. 'learned'
#: regresses the per-image AP gain from the exit's outputs; the gain routers add the maps'
#: expected object count and score bands (and F_k's distance from the fitting images), and rank
#: the AP gain or classify "the cloud finds more objects here"
LEARNED_ROUTERS = {
    'learned': dict(),
    'gain rank': dict(gain_features=True, objective='rank'),
    'gain class': dict(gain_features=True, objective='classify'),
    'gain class+ood': dict(gain_features=True, ood_features=True, objective='classify'),
}


def calibration_dataset_cfg(cfg):
    """The calibration split of a dynamic config (its RouterCalibrationHook's dataset)."""
    for h in cfg.get('custom_hooks') or []:
        if h.get('type') == 'RouterCalibrationHook':
            return copy.deepcopy(h['dataloader']['dataset'])
    raise ValueError('the dynamic config has no RouterCalibrationHook: no calibration split')


def needs_calibration(cfg) -> bool:
    """A dynamic config whose router threshold or score maps come from calibration."""
    m = cfg.model
    if not m.get('edge_exit') or not m.get('router'):
        return False
    return bool(m.get('calibrate_scores')) or BaseRouter.config_needs_calibration(m.router)


def calibrated_if_dynamic(config: str, checkpoint: str, data_root: Optional[str],
                          purpose: str):
    """(model, config) of a dynamic ``config`` calibrated on its calibration split, as in the
    Runner; None when the config needs no calibration. Without ``data_root`` a config that needs
    it is refused, the error saying ``purpose`` (who calibrates, on which images)."""
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.utils import ConfigError
    if not needs_calibration(load_config(config, data_root)):
        return None
    if not data_root:
        raise ConfigError(
            f'{config} is a dynamic model whose router threshold / score maps are fitted on its '
            f'calibration split ({purpose}): give --data-root DIR (the dataset with that split) '
            'and the full checkpoint')
    from .rate_accuracy import calibrated_dynamic_model
    return calibrated_dynamic_model(config, checkpoint, data_root)


def load_dynamic(config: str, checkpoint: str, data_root: Optional[str] = None,
                 with_calibration_split: bool = True, cfg_options: Optional[dict] = None,
                 **model_overrides):
    """(config, model, calibration dataset or None) of a dynamic config. ``model_overrides``
    replace whole model keys (None removes one): ``ConfigDict.update`` would merge them;
    ``cfg_options`` are ``--cfg-options`` overrides, applied first."""
    cfg = load_config(config, data_root, cfg_options)
    mcfg = copy.deepcopy(cfg.model)
    for k, v in model_overrides.items():
        if v is None:
            mcfg.pop(k, None)
        else:
            mcfg[k] = v
    model = build_detector(mcfg, checkpoint, partial='split' if model_overrides else False)
    if model.edge_exit is None:
        raise ConfigError(f'{config} has no edge_exit: not a dynamic configuration')
    calib = None
    if with_calibration_split:
        calib_cfg = calibration_dataset_cfg(cfg)
        check_calibration_split(calib_cfg, [('test_dataloader', cfg.test_dataloader.dataset)])
        from mmdet.registry import DATASETS
        calib = DATASETS.build(calib_cfg)
    return cfg, model, calib


def _batches(model, dataset, indices, batch_size=4):
    for s in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[s:s + batch_size]]
        data = model.data_preprocessor(pseudo_collate(items), False)
        yield data['inputs'], data['data_samples']


def run_pass(model, dataset, indices, offload_all: bool, progress: str = '') -> List[dict]:
    """Per image: raw-score predictions + CommRecord of the real deployment path, every image
    kept on the edge exit (``offload_all=False``) or sent to the cloud."""
    return tier_predictions(model, _batches(model, dataset, indices), offload_all, progress)


@torch.no_grad()
def fit_routers(model, dataset, indices, routers: Dict[str, object]) -> None:
    """Routers whose score has parameters fitted on the calibration images (``fit_calibration``,
    e.g. the empty exit's ``empty_below``) fit them, as ``calibrate_router`` does."""
    fits = [r for r in routers.values() if callable(getattr(r, 'fit_calibration', None))]
    parts = {id(r): [] for r in fits}
    for inputs, samples in _batches(model, dataset, indices) if fits else ():
        exits = model.run_exits(model.edge_features(inputs), samples)
        for r in fits:
            parts[id(r)].append(r.calibration_parts(exits))
    for r in fits:
        r.fit_calibration(torch.cat(parts[id(r)]))


@torch.no_grad()
def exit_scores(model, dataset, indices, routers: Dict[str, object],
                learned: Dict[str, LearnedRouter]):
    """Per image: each heuristic router's score, and each learned router's features."""
    scores = {name: [] for name in routers}
    feats = {name: [] for name in learned}
    for inputs, samples in _batches(model, dataset, indices):
        exits = model.run_exits(model.edge_features(inputs), samples)
        for name, r in routers.items():
            scores[name].append(r.scores(exits).double())
        for name, r in learned.items():
            feats[name].append(r.features(exits))
    return ({k: torch.cat(v).numpy() for k, v in scores.items()},
            {k: torch.cat(v) for k, v in feats.items()})


def offload_targets(ann_file, edge_pass, cloud_pass, cat_ids) -> Dict[str, np.ndarray]:
    """Per image: ``ap`` = AP of the cloud's result minus the exit's (0 without ground truth),
    ``found`` = objects the cloud finds minus those the exit finds (:func:`found_objects`)."""
    boot = ImageBootstrap(ann_file, [p['img_id'] for p in edge_pass], 1)
    ev_e, ev_c = boot.evaluate(edge_pass, cat_ids), boot.evaluate(cloud_pass, cat_ids)
    return dict(ap=np.nan_to_num(per_image_ap(boot, ev_c) - per_image_ap(boot, ev_e)),
                found=found_objects(boot, ev_c, MISSED_SCORE_THR)
                - found_objects(boot, ev_e, MISSED_SCORE_THR))


def router_target(router: LearnedRouter, targets: Dict[str, np.ndarray]) -> torch.Tensor:
    """What a learned router is fitted to: the object-count difference when it classifies
    (\"the cloud finds more objects here\"), the AP gain otherwise."""
    return torch.as_tensor(targets['found' if router.objective == 'classify' else 'ap'])


def recalibrated(preds, score_map):
    return [dict(p, scores=score_map(p['scores'])) for p in preds]


def _system(offload, edge_pass, cloud_pass, boot, evs, raw_evs=None, edge_encodes=True):
    """Figures of one routing, scored on ``evs`` = (exit, cloud) matches (calibrated scores, or
    raw ones when ``raw_evs`` is None). ``edge_encodes``: an offloaded image's edge FLOPs are those of
    the cloud pass (features encoded on the edge); otherwise those of the exit pass (the image
    is sent as a JPEG, whose encoder runs outside torch and is not counted)."""
    offload = np.asarray(offload, dtype=bool)
    e_flops = np.array([(c if o and edge_encodes else e)['comm']['edge_flops'] or 0.0
                        for o, e, c in zip(offload, edge_pass, cloud_pass)])
    c_flops = np.array([c['comm']['cloud_flops'] or 0.0 if o else 0.0
                        for o, c in zip(offload, cloud_pass)])
    nbytes = np.array([c['comm']['payload_bytes'] if o else 0
                       for o, c in zip(offload, cloud_pass)], dtype=float)
    ev = compose(boot, list(evs), offload.astype(int))
    # missed objects count detections at a raw-score threshold: on the uncalibrated matches
    raw = ev if raw_evs is None else compose(boot, list(raw_evs), offload.astype(int))
    return dict(offload_ratio=float(offload.mean()), mAP=100 * boot.mAP(ev),
                bytes_per_image=float(nbytes.mean()), edge_gflops=float(e_flops.mean()) / 1e9,
                cloud_gflops=float(c_flops.mean()) / 1e9,
                missed_objects=missed_objects(raw, MISSED_SCORE_THR)), ev


def independent_pipeline(pipeline, jpeg_quality: int, corruption=None) -> list:
    """The Independent teacher's evaluation pipeline: the camera image, corrupted as the
    evaluation images are (``corruption``: (name, severity)), then coded as JPEG."""
    steps = add_image_codec_baseline(pipeline, 'jpeg', jpeg_quality)
    return add_corruption(steps, corruption[0], int(corruption[1])) if corruption else steps


def _collect(model, val, val_idx, train, train_cfg, calib_idx, rtrain_idx, heur, learned, n,
             teacher_config, teacher_checkpoint, data_root, jpeg_quality, ann_val,
             corruption=None):
    """Everything that runs a model: both passes on the evaluation and router-fitting images,
    router inputs on all three sets, and the teacher on JPEG images (Independent)."""
    print(f'- evaluation split: {n} images, exits only / all through the bitstream', flush=True)
    edge_val = run_pass(model, val, val_idx, False, 'edge exit')
    cloud_val = run_pass(model, val, val_idx, True, 'cloud')
    print(f'- router fitting: {len(rtrain_idx)} held-out calibration-split images', flush=True)
    edge_tr = run_pass(model, train, rtrain_idx, False, 'edge exit')
    cloud_tr = run_pass(model, train, rtrain_idx, True, 'cloud')
    print('- router scores (evaluation, router-fitting and calibration images)', flush=True)
    fit_routers(model, train, calib_idx, heur)
    s_val, f_val = exit_scores(model, val, val_idx, heur, learned)
    s_tr, f_tr = exit_scores(model, train, rtrain_idx, heur, learned)
    s_cal, f_cal = exit_scores(model, train, calib_idx, heur, learned)
    print(f'- Independent: the teacher on JPEG q={jpeg_quality} images', flush=True)
    tcfg = load_config(teacher_config, data_root)
    teacher = build_detector(tcfg.model, teacher_checkpoint, partial='split')
    jpeg_ds = build_test_dataset(tcfg, independent_pipeline(
        tcfg.test_dataloader.dataset.pipeline, jpeg_quality, corruption))
    jpeg_val, jpeg_tr = [], []
    evaluate_detector(teacher, jpeg_ds, ann_file=ann_val, num_images=n, progress=False,
                      predictions_out=jpeg_val)
    from mmdet.registry import DATASETS
    jpeg_train = DATASETS.build(dict(copy.deepcopy(train_cfg), pipeline=add_image_codec_baseline(
        train_cfg['pipeline'], 'jpeg', jpeg_quality)))
    for inputs, samples in _batches(teacher, jpeg_train, rtrain_idx):
        with torch.no_grad():
            for r in teacher.predict(inputs, samples):
                inst = r.pred_instances
                jpeg_tr.append(dict(img_id=r.img_id, bboxes=inst.bboxes.numpy(),
                                    scores=inst.scores.numpy(), labels=inst.labels.numpy()))
    return (edge_val, cloud_val, edge_tr, cloud_tr, s_val, f_val, s_tr, f_tr, s_cal, f_cal,
            jpeg_val, jpeg_tr)


class _Passes(NamedTuple):
    """What :func:`_collect` computes (cached as a plain tuple in this order)."""
    edge_val: list   # per evaluation image: the exit's result (+ record)
    cloud_val: list  # ... and the cloud's, through the bitstream
    edge_tr: list    # the same on the router-fitting images
    cloud_tr: list
    s_val: dict      # heuristic router -> scores; f_*: learned router -> its features
    f_val: dict
    s_tr: dict
    f_tr: dict
    s_cal: dict
    f_cal: dict
    jpeg_val: list   # the teacher on JPEG images (Independent)
    jpeg_tr: list


class _Matches(NamedTuple):
    """COCO matches of the exit and the cloud on the evaluation images, raw and calibrated."""
    raw: tuple  # (exit, cloud)
    cal: tuple
    targets_tr: dict       # per router-fitting image: AP(cloud) - AP(exit), objects found
    gains_val: np.ndarray  # the same on the evaluation images (the oracle's order)


def _calibration_indices(num_available: int, num_calib: int, num_router_train: int):
    """The first images calibrate (as RouterCalibrationHook does), the next ones fit the
    router -> (calibration indices, router-fitting indices)."""
    if num_available < num_router_train + num_calib:
        raise ValueError(f'the calibration split has {num_available} images, fewer than '
                         f'{num_calib} (calibration) + {num_router_train} (router fitting); '
                         'generate more (tools/make_synthetic_coco.py --num-calib N)')
    return list(range(num_calib)), list(range(num_calib, num_calib + num_router_train))


def _cached_passes(cache: Optional[str], key: dict, collect) -> _Passes:
    """``collect()``, or what ``cache`` holds when it was made with the same ``key``."""
    passes = None
    if cache and osp.isfile(cache):
        with open(cache, 'rb') as f:
            stored = pickle.load(f)
        passes = stored['passes'] if stored.get('key') == key else None
    if passes is None:
        passes = collect()
        if cache:
            os.makedirs(osp.dirname(osp.abspath(cache)), exist_ok=True)
            with open(cache, 'wb') as f:
                pickle.dump(dict(key=key, passes=passes), f)
    else:
        print(f'- reusing the model passes in {cache}', flush=True)
    return _Passes(*passes)


def _matches(boot, p: _Passes, ann_train: str, val_cat_ids, train_cat_ids) -> _Matches:
    ev_edge, ev_cloud = (boot.evaluate(q, val_cat_ids) for q in (p.edge_val, p.cloud_val))
    targets_tr = offload_targets(ann_train, p.edge_tr, p.cloud_tr, train_cat_ids)
    # per-tier score calibration, fitted on the same held-out images as the learned router
    maps = score_maps_from_predictions(ann_train, p.edge_tr, p.cloud_tr, train_cat_ids)
    ev_edge_cal = boot.evaluate(recalibrated(p.edge_val, maps['edge']), val_cat_ids)
    ev_cloud_cal = boot.evaluate(recalibrated(p.cloud_val, maps['cloud']), val_cat_ids)
    gains_val = np.nan_to_num(per_image_ap(boot, ev_cloud) - per_image_ap(boot, ev_edge))
    return _Matches((ev_edge, ev_cloud), (ev_edge_cal, ev_cloud_cal), targets_tr, gains_val)


def learned_routers(model) -> Dict[str, LearnedRouter]:
    """Fresh :data:`LEARNED_ROUTERS` for ``model``'s F_k."""
    return {name: LearnedRouter(feature_channels=model.splitter.split_channels(), threshold=0.0,
                                **kw) for name, kw in LEARNED_ROUTERS.items()}


def _fit_learned_routers(model, p: _Passes, learned: Dict[str, LearnedRouter],
                         targets_tr: dict) -> dict:
    """Fit each learned router on the held-out images; adds their scores to ``p.s_*``. A
    router whose targets do not vary (nothing to rank or classify) is left out, said so."""
    fits, fp = {}, exit_fingerprint(model.edge_exit)
    for name, r in list(learned.items()):
        try:
            fits[name] = r.fit(p.f_tr[name], router_target(r, targets_tr), fp)
        except ValueError as e:
            print(f'- learned router {name!r} left out: {e}', flush=True)
            del learned[name]
            continue
        with torch.no_grad():
            for s, f in ((p.s_val, p.f_val), (p.s_cal, p.f_cal), (p.s_tr, p.f_tr)):
                s[name] = r(f[name]).double().numpy()
    return fits


def _dynamic_rows(p: _Passes, boot, m: _Matches, routers, ratios, n: int):
    """All-cloud, edge-only and every router at every ratio, with calibrated and raw scores
    -> (rows, matches per (router, ratio) of the calibrated sweep, all-cloud matches)."""
    all_cloud, ev_all = _system(np.ones(n, bool), p.edge_val, p.cloud_val, boot, m.cal, m.raw)
    all_edge, _ = _system(np.zeros(n, bool), p.edge_val, p.cloud_val, boot, m.cal, m.raw)
    rows = [dict(variant='Adaptive', router='-', target_ratio=1.0, **all_cloud),
            dict(variant='edge exit only', router='-', target_ratio=0.0, **all_edge)]
    evals = {}
    for variant, evs, raw_evs in (('Dynamic', m.cal, m.raw), ('Dynamic, raw scores', m.raw, None)):
        for name in routers:
            for r in ratios:
                t = threshold_for_ratio(torch.as_tensor(p.s_cal[name]), float(r))
                fig, ev = _system(p.s_val[name] > t, p.edge_val, p.cloud_val, boot, evs, raw_evs)
                rows.append(dict(variant=variant, router=name, target_ratio=float(r),
                                 threshold=t, **fig))
                if variant == 'Dynamic':
                    evals[(name, float(r))] = ev
    return rows, evals, ev_all


def _confident(pred) -> tuple:
    """(count, score sum) of a result's detections scoring >= MISSED_SCORE_THR."""
    sc = np.asarray(pred['scores'], dtype=float)
    sc = sc[sc >= MISSED_SCORE_THR]
    return float(sc.size), float(sc.sum())


def _oracle_rows(p: _Passes, boot, m: _Matches, ratios, n: int, evals: dict) -> List[dict]:
    """Offload the images the cloud improves most (and: each image's better result); and
    'oracle-dets', the images where the cloud's own detections find most (a router that could
    see the cloud's output, but not the ground truth)."""
    # the second: what a router could know from the cloud's own detections (no ground truth):
    # the images where the cloud reports most objects (ties: by the sum of those scores)
    dets = np.array([_confident(c) for c in p.cloud_val])
    rows = []
    for name, order in (('oracle', np.argsort(-m.gains_val, kind='stable')),
                        ('oracle-dets', np.lexsort((-dets[:, 1], -dets[:, 0])))):
        for r in ratios:
            off = np.zeros(n, bool)
            off[order[:int(round(float(r) * n))]] = True
            fig, ev = _system(off, p.edge_val, p.cloud_val, boot, m.cal, m.raw)
            rows.append(dict(variant='Dynamic', router=name, target_ratio=float(r), **fig))
            evals[(name, float(r))] = ev
    best_each, _ = _system(m.gains_val > 0, p.edge_val, p.cloud_val, boot, m.cal, m.raw)
    rows.append(dict(variant='Dynamic', router='oracle (better of the two per image)',
                     target_ratio=None, **best_each))
    return rows


def _independent_rows(p: _Passes, boot, m: _Matches, ann_train: str, val_cat_ids,
                      train_cat_ids, ratios, routers) -> List[dict]:
    """The same exit and routers; offloaded images go as JPEG to the unsplit teacher (its
    scores calibrated like the student's, on the same held-out images)."""
    ev_jpeg = boot.evaluate(p.jpeg_val, val_cat_ids)
    jmap = score_maps_from_predictions(ann_train, p.edge_tr, p.jpeg_tr, train_cat_ids)['cloud']
    ev_jpeg_cal = boot.evaluate(recalibrated(p.jpeg_val, jmap), val_cat_ids)
    rows = []
    for name in routers:
        for r in ratios:
            t = threshold_for_ratio(torch.as_tensor(p.s_cal[name]), float(r))
            off = p.s_val[name] > t
            fig, _ = _system(off, p.edge_val, p.jpeg_val, boot, (m.cal[0], ev_jpeg_cal),
                             (m.raw[0], ev_jpeg), edge_encodes=False)
            rows.append(dict(variant='Independent', router=name, target_ratio=float(r), **fig))
    return rows


def run_dynamic(config: str, checkpoint: str, teacher_config: str, teacher_checkpoint: str,
                data_root: Optional[str] = None, num_images: Optional[int] = None,
                num_router_train: int = 200, num_calib: int = 200,
                ratios: Sequence[float] = tuple(np.round(np.linspace(0, 1, 11), 2)),
                jpeg_quality: int = 50, bootstrap: int = 200,
                cache: Optional[str] = None, corruption: Optional[Sequence] = None) -> dict:
    """``cache``: a pickle of the model passes (predictions, records, router inputs), reused when
    it was made with the same checkpoints and split sizes (to re-analyse without re-running).
    ``corruption``: (name, severity) applied to the evaluation images only; routers are
    calibrated and fitted on clean held-out images, as deployed before the shift."""
    cfg, model, train = load_dynamic(config, checkpoint, data_root, router=None,
                                     train_exits_only=False)
    calib_cfg = calibration_dataset_cfg(cfg)
    pipeline = cfg.test_dataloader.dataset.pipeline
    val = build_test_dataset(cfg, add_corruption(pipeline, corruption[0], int(corruption[1]))
                             if corruption else None)
    n = len(val) if num_images is None else min(num_images, len(val))
    calib_idx, rtrain_idx = _calibration_indices(len(train), num_calib, num_router_train)
    ann_val = cfg.test_evaluator['ann_file'] if isinstance(cfg.test_evaluator, dict) else \
        cfg.test_evaluator[0]['ann_file']
    ann_train = calib_cfg['data_root'].rstrip('/') + '/' + calib_cfg['ann_file']
    heur = {k: f() for k, f in HEURISTIC_ROUTERS.items()}
    learned = learned_routers(model)
    key = dict(version=6, checkpoint=osp.abspath(checkpoint), mtime=osp.getmtime(checkpoint),
               teacher=osp.abspath(teacher_checkpoint), n=n, num_calib=num_calib,
               num_router_train=num_router_train, jpeg_quality=jpeg_quality, data_root=data_root,
               corruption=list(corruption) if corruption else None)
    p = _cached_passes(cache, key, lambda: _collect(
        model, val, list(range(n)), train, calib_cfg, calib_idx, rtrain_idx, heur, learned, n,
        teacher_config, teacher_checkpoint, data_root, jpeg_quality, ann_val, corruption))
    boot = ImageBootstrap(ann_val, [q['img_id'] for q in p.edge_val], max(bootstrap, 1))
    m = _matches(boot, p, ann_train, val.cat_ids, train.cat_ids)
    fit = _fit_learned_routers(model, p, learned, m.targets_tr)
    rows, evals, ev_all = _dynamic_rows(p, boot, m, list(heur) + list(learned), ratios, n)
    rows += _oracle_rows(p, boot, m, ratios, n, evals)
    rows += _independent_rows(p, boot, m, ann_train, val.cat_ids, train.cat_ids, ratios,
                              ('random', best_router(rows)))
    summary = summarize(rows, boot, evals, ev_all)
    return dict(rows=rows, summary=summary, num_images=n, num_router_train=num_router_train,
                num_calib=num_calib, jpeg_quality=jpeg_quality, router_fit=fit,
                extension_share=float(np.mean([q['comm'].get('tier') == 'edge_extension'
                                               for q in p.edge_val])),
                bootstrap=bootstrap, corruption=list(corruption) if corruption else None,
                empty_exit=empty_exit_offloading(p, list(heur) + list(learned), 0.5),
                gains_val=dict(
                    mean=float(m.gains_val.mean()), positive=float((m.gains_val > 0).mean()),
                    zero=float((m.gains_val == 0).mean())))


def empty_exit_offloading(p: '_Passes', routers, ratio: float) -> dict:
    """The images on which the exit finds nothing (no detection scoring MISSED_SCORE_THR) and
    the cloud finds something, and the share of them each heuristic router offloads at its
    threshold for ``ratio`` (calibrated on the clean held-out images)."""
    found = lambda q: bool((np.asarray(q['scores']) >= MISSED_SCORE_THR).any())  # noqa: E731
    idx = [i for i, (e, c) in enumerate(zip(p.edge_val, p.cloud_val))
           if not found(e) and found(c)]
    out = dict(images=len(idx), of=len(p.edge_val), ratio=ratio, offloaded={})
    for name in routers:
        t = threshold_for_ratio(torch.as_tensor(p.s_cal[name]), ratio)
        out['offloaded'][name] = float((p.s_val[name][idx] > t).mean()) if idx else None
    return out


def best_router(rows) -> str:
    """The non-random, non-oracle router with the best mean mAP over the Dynamic sweep."""
    means = {}
    for r in rows:
        if r['variant'] == 'Dynamic' and r['router'] not in ('random', ) \
                and not r['router'].startswith('oracle'):
            means.setdefault(r['router'], []).append(r['mAP'])
    return max(means, key=lambda k: np.mean(means[k]))


def pareto(rows) -> List[int]:
    """Indices of the rows not dominated in (edge GFLOPs low, bytes low, mAP high)."""
    pts = [(r['edge_gflops'], r['bytes_per_image'], -r['mAP']) for r in rows]
    keep = []
    for i, p in enumerate(pts):
        if not any(all(a <= b for a, b in zip(q, p)) and q != p for q in pts):
            keep.append(i)
    return keep


def summarize(rows, boot, evals, ev_all) -> dict:
    cloud = next(r for r in rows if r['variant'] == 'Adaptive')
    best = best_router(rows)
    dyn = {}
    for r in rows:
        if r['variant'] == 'Dynamic' and r['target_ratio'] is not None:
            dyn.setdefault(r['router'], {})[r['target_ratio']] = r
    ratios = sorted(dyn['random'])
    cloud_samples = boot.sample_maps(ev_all)

    def diff_ci(name, ratio):
        d = 100 * (boot.sample_maps(evals[(name, ratio)]) - cloud_samples)
        return [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]

    half = dyn[best].get(0.5)
    out = dict(best_router=best, all_cloud_mAP=cloud['mAP'],
               all_cloud_bytes=cloud['bytes_per_image'])
    if half is not None:
        out['half'] = dict(router=best, offload_ratio=half['offload_ratio'], mAP=half['mAP'],
                           drop=cloud['mAP'] - half['mAP'], drop_ci=[-x for x in
                                                                    diff_ci(best, 0.5)[::-1]],
                           met=cloud['mAP'] - half['mAP'] <= TARGET_MAP_DROP_AT_HALF)
        o = dyn['oracle'].get(0.5)
        out['half']['oracle_mAP'] = None if o is None else o['mAP']
    out['gap_closed_at_half'] = gap_closed(dyn, 0.5)
    inner = [r for r in ratios if 0 < r < 1]
    out['beats_random'] = {str(r): dyn[best][r]['mAP'] - dyn['random'][r]['mAP'] for r in inner}
    out['beats_random_everywhere'] = all(v > 0 for v in out['beats_random'].values())
    out['gap_to_oracle'] = {str(r): dyn['oracle'][r]['mAP'] - dyn[best][r]['mAP']
                            for r in inner}
    ok = [r for r in rows if r['variant'] == 'Dynamic' and not r['router'].startswith('oracle')
          and r['router'] != 'random' and cloud['mAP'] - r['mAP'] <= TARGET_MAP_LOSS]
    if ok:
        b = min(ok, key=lambda r: r['bytes_per_image'])
        out['cheapest_within_loss'] = dict(
            router=b['router'], target_ratio=b['target_ratio'], offload_ratio=b['offload_ratio'],
            mAP=b['mAP'], bytes_per_image=b['bytes_per_image'],
            bytes_fraction=b['bytes_per_image'] / cloud['bytes_per_image'],
            mAP_loss_ci=[-x for x in diff_ci(b['router'], b['target_ratio'])[::-1]],
            met=b['bytes_per_image'] <= TARGET_BYTES_FRACTION * cloud['bytes_per_image'])
    real = [i for i, r in enumerate(rows) if not r['router'].startswith('oracle')]
    out['pareto'] = [real[i] for i in pareto([rows[i] for i in real])]
    return out


def gap_closed(dyn: dict, ratio: float) -> dict:
    """router -> (its mAP - random's) / (the oracle's - random's) at ``ratio``: the share of
    the random-to-oracle gap it closes (1 = the oracle)."""
    rnd, orc = dyn.get('random', {}).get(ratio), dyn.get('oracle', {}).get(ratio)
    if rnd is None or orc is None or orc['mAP'] <= rnd['mAP']:
        return {}
    return {name: (pts[ratio]['mAP'] - rnd['mAP']) / (orc['mAP'] - rnd['mAP'])
            for name, pts in dyn.items() if name not in ('random', 'oracle') and ratio in pts}


def _f(v, spec):
    return '-' if v is None else format(v, spec)


def table(res) -> str:
    rows, s = res['rows'], res['summary']
    head = (f"{'variant':<19} {'router':<16} {'target':>6} {'offload':>7} {'mAP':>6} "
            f"{'bytes/img':>9} {'edge GF':>8} {'cloud GF':>8} {'missed':>7}  pareto")
    lines = [f"Dynamic edge-cloud inference on {res['num_images']} evaluation images "
             f"(thresholds calibrated on {res['num_calib']}, learned router fitted on "
             f"{res['num_router_train']} other held-out images; Independent sends JPEG "
             f"q={res['jpeg_quality']}); GF = GFLOPs per image, bytes over all images, missed = "
             f"objects no detection scoring >= {MISSED_SCORE_THR} finds (IoU 0.5)"
             + (' ; evaluation images corrupted: {} severity {}'.format(*res['corruption'])
                if res.get('corruption') else ''),
             head, '-' * len(head)]
    for i, r in enumerate(rows):
        router = r['router'] if len(r['router']) <= 16 else 'oracle (best)'
        lines.append(
            f"{r['variant']:<19} {router:<16} {_f(r['target_ratio'], '.2f'):>6} "
            f"{r['offload_ratio']:>7.2f} {r['mAP']:>6.2f} {r['bytes_per_image']:>9.0f} "
            f"{r['edge_gflops']:>8.4f} {r['cloud_gflops']:>8.4f} "
            f"{_f(r.get('missed_objects'), '7.1%')}  "
            f"{'*' if i in s['pareto'] else ''}")
    lines.append('')
    lines.append(f"all-cloud (Adaptive) mAP {s['all_cloud_mAP']:.2f} at "
                 f"{s['all_cloud_bytes']:.0f} B/image; best router: {s['best_router']}")
    h = s.get('half')
    if h:
        lines.append(
            f"target 1 (50 % on the edge, mAP >= all-cloud - {TARGET_MAP_DROP_AT_HALF}): "
            f"{h['router']} at offload {h['offload_ratio']:.2f}: {h['mAP']:.2f} mAP, drop "
            f"{h['drop']:.2f} [95 % CI {h['drop_ci'][0]:.2f}, {h['drop_ci'][1]:.2f}] "
            f"(oracle {_f(h['oracle_mAP'], '.2f')}) -> {'met' if h['met'] else 'MISSED'}")
    wins = s['beats_random']
    lines.append(f"target 2 (best router beats random at every ratio): "
                 f"{'met' if s['beats_random_everywhere'] else 'MISSED'}; margins "
                 + ', '.join(f'{k}: {v:+.2f}' for k, v in wins.items()))
    lines.append('  gap to the oracle: ' + ', '.join(f'{k}: {v:.2f}'
                                                     for k, v in s['gap_to_oracle'].items()))
    if s.get('gap_closed_at_half'):
        lines.append('share of the random-to-oracle gap closed at offload target 0.5 (goal >= '
                     '50 %): ' + ', '.join(f'{k}: {100 * v:.0f} %'
                                          for k, v in s['gap_closed_at_half'].items()))
    c = s.get('cheapest_within_loss')
    if c:
        lines.append(
            f"target 3 (<= {TARGET_BYTES_FRACTION:g} x all-cloud bytes for <= {TARGET_MAP_LOSS} "
            f"mAP loss): {c['router']} at offload {c['offload_ratio']:.2f}: "
            f"{c['bytes_per_image']:.0f} B/image = {c['bytes_fraction']:.2f} x, mAP "
            f"{c['mAP']:.2f} (loss CI [{c['mAP_loss_ci'][0]:.2f}, {c['mAP_loss_ci'][1]:.2f}]) -> "
            f"{'met' if c['met'] else 'MISSED'}")
    else:
        lines.append('target 3: no operating point within the mAP loss -> MISSED')
    e = res.get('empty_exit')
    if e:
        shares = ', '.join(f'{k}: ' + ('-' if v is None else f'{100 * v:.0f} %')
                           for k, v in e['offloaded'].items())
        lines.append(f"exit finds nothing, the cloud something: {e['images']} of {e['of']} "
                     f"images; offloaded at target {e['ratio']:g}: {shares}")
    return '\n'.join(lines)


#: router -> line style in the dynamic plots (others: matplotlib's cycle, a circle)
ROUTER_STYLE = {'random': dict(ls=':', color='gray', marker='v'),
                'oracle': dict(ls='--', color='k', marker='*', ms=8),
                'oracle-dets': dict(ls='--', color='gray', marker='x'),
                'score band': dict(marker='o'), 'entropy': dict(marker='s'),
                'learned': dict(marker='D')}


def _router_curves(rows) -> Dict[tuple, list]:
    """(variant, router) -> its swept rows (those with a target ratio), by offload ratio."""
    curves = {}
    for r in rows:
        if r['target_ratio'] is not None:
            curves.setdefault((r['variant'], r['router']), []).append(r)
    return {k: sorted(v, key=lambda r: r['offload_ratio']) for k, v in curves.items()}


def _plot_routers(ax, curves, all_cloud_mAP) -> None:
    """The Dynamic variant's routers: system mAP against the share of images offloaded."""
    for (variant, router), pts in curves.items():
        if variant == 'Dynamic':
            ax.plot([100 * p['offload_ratio'] for p in pts], [p['mAP'] for p in pts],
                    label=f'{router} router', **dict(dict(marker='o', ms=4),
                                                     **ROUTER_STYLE.get(router, {})))
    ax.axhline(all_cloud_mAP, color='tab:red', lw=0.8, ls='-.',
               label=f'all images to the cloud ({all_cloud_mAP:.1f} mAP)')
    ax.set_xlabel('images offloaded to the cloud (%)')
    ax.set_ylabel('system bbox mAP (COCO, %)')
    ax.set_title('Routers: accuracy vs share offloaded')


def _plot_variants(ax, res, curves, rate_accuracy_rows) -> None:
    """Adaptive, Dynamic and Independent (best router) and the images sent with each codec:
    system mAP against the mean uplink KB over all images."""
    from .plotting import kb_log_axis
    from .rate_accuracy import INPUT_PREFIX, SERIES_STYLE
    best, kbs = res['summary']['best_router'], []
    for variant, marker, color in (('Dynamic', 'o', 'tab:purple'),
                                   ('Independent', 's', 'tab:brown')):
        pts = [p for p in curves.get((variant, best), []) if p['bytes_per_image'] > 0]
        kbs += [p['bytes_per_image'] / 1000 for p in pts]
        ax.plot([p['bytes_per_image'] / 1000 for p in pts], [p['mAP'] for p in pts],
                marker=marker, ms=4, color=color, label=f'{variant} ({best} router)')
    ad = next(r for r in res['rows'] if r['variant'] == 'Adaptive')
    kbs.append(ad['bytes_per_image'] / 1000)
    ax.plot([kbs[-1]], [ad['mAP']], '*', color='tab:red', ms=13,
            label='Adaptive (every image to the cloud)')
    for method in dict.fromkeys(r['method'] for r in rate_accuracy_rows or []
                                if r['method'].startswith(INPUT_PREFIX)):
        pts = sorted((r['bytes_per_image'] / 1000, r['bbox_mAP']) for r in rate_accuracy_rows
                     if r['method'] == method and r['bytes_per_image'] > 0)
        codec = method[len(INPUT_PREFIX):]
        color, marker = SERIES_STYLE.get(codec.split()[0], ('gray', 'x'))
        kbs += [p[0] for p in pts]
        ax.plot(*zip(*pts), marker=marker, ms=3, lw=0.8, color=color, alpha=0.45,
                label=f'{codec} image to the teacher')
    kb_log_axis(ax, kbs, 'mean uplink KB per image, over all images')
    ax.set_ylabel('system bbox mAP (COCO, %)')
    ax.set_title('Variants: accuracy vs bytes')


def plot(res, path, rate_accuracy_rows=None, title: Optional[str] = None) -> None:
    """Routers against the offload ratio (left), variants against the bytes (right)."""
    from .plotting import legend_beside, pyplot, save
    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(12, 4.6))
    curves = _router_curves(res['rows'])
    _plot_routers(a1, curves, res['summary']['all_cloud_mAP'])
    _plot_variants(a2, res, curves, rate_accuracy_rows)
    for ax in (a1, a2):
        ax.grid(True, alpha=0.3)
        legend_beside(ax, loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(title or 'Dynamic inference: edge exit + router vs sending every image')
    save(fig, path)
