"""Rate-accuracy comparison: learned bottleneck vs sending the image vs n-bit features.

The engine of ``tools/benchmark_rate_accuracy.py`` and of the demo's comparison table (the
project's acceptance targets, tables and plots live here, with the tools, not in the library).
On one dataset and with the same CocoMetric + CommunicationMetric it evaluates the teacher
(original images), the teacher on images sent with each image codec (JPEG, WebP, AVIF; at the
camera resolution and, optionally, fitted to the detector's input size), QuantizeNeck features at
the students' split point (teacher weights, no training) and trained students, and summarises
the result against the targets. The reference curve is the Pareto front over *all* input codecs.
"""
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ecc_mmdet.apis import (build_detector, build_test_dataset, evaluate_detector, load_config,
                            split_model_cfg)
from ecc_mmdet.datasets.transforms import add_image_codec_baseline
from ecc_mmdet.evaluation import bandwidth_key
from ecc_mmdet.evaluation.bd_rate import bd_rate
from ecc_mmdet.evaluation.bootstrap import ImageBootstrap

CODEC_LABELS = {'jpeg': 'JPEG', 'webp': 'WebP', 'avif': 'AVIF'}
INPUT_PREFIX = 'cloud-only '
LEARNED = 'learned bottleneck'
VARIABLE = 'variable-rate student'
DYNAMIC = 'dynamic (exit + router)'
#: the dynamic system run through the light edge client and the cloud server (tools/demo.py)
SERVED = 'system, served over HTTP (loopback)'
#: rows of a trained codec: each is compared with the input-codec front at its mAP
LEARNED_KINDS = (LEARNED, VARIABLE, DYNAMIC, SERVED)
#: the project's targets (issue "Rate-accuracy: beat the strongest way of sending the image")
TARGET_BD_RATE = -0.50          # vs the Pareto front of all input codecs
TARGET_MAP_GAP = 1.0            # student within this many mAP points of the teacher ...
TARGET_BYTES_RATIO = 0.25       # ... at <= this fraction of the cheapest input codec doing so
TARGET_EDGE_FLOPS = 0.15
TARGET_VARIABLE_RATE_GAP = 0.5  # each rate point within this many mAP of single-rate students
#: the single-rate codec each variable-rate codec is compared with
SINGLE_RATE_OF = {'variable_rate_bottleneck': 'entropy_bottleneck',
                  'variable_rate_hyperprior': 'hyperprior_bottleneck',
                  'variable_rate_channel_context': 'channel_context_hyperprior'}


def row(method, setting, metrics, bandwidth):
    """One result row from an evaluator's metrics dict."""
    lat = metrics.get(f'comm/latency_ms_at_{bandwidth_key(bandwidth)}')
    edge, cloud = metrics.get('comm/edge_gflops'), metrics.get('comm/cloud_gflops')
    # CocoMetric reports no bbox keys when the model predicts no box on any image: that is 0 mAP
    return dict(method=method, setting=setting,
                bytes_per_image=metrics.get('comm/bytes_per_image_mean', 0.0),
                bbox_mAP=100.0 * metrics.get('coco/bbox_mAP', 0.0),
                bbox_mAP_50=100.0 * metrics.get('coco/bbox_mAP_50', 0.0),
                edge_gflops=edge, cloud_gflops=cloud,
                edge_flops_fraction=metrics.get('comm/edge_flops_fraction'),
                latency_ms=lat, real_to_est=metrics.get('comm/real_to_est_ratio'),
                offload_ratio=metrics.get('comm/offload_ratio'))


def input_codec_method(codec: str, fitted: bool) -> str:
    return f'{INPUT_PREFIX}{CODEC_LABELS.get(codec, codec)}' + (' (fitted)' if fitted else '')


def detector_input_size(pipeline) -> Optional[Tuple[int, int]]:
    """The (w, h) scale of the test pipeline's Resize: the detector's input size."""
    for step in pipeline:
        if str(step.get('type', '')).split('.')[-1] == 'Resize' and step.get('scale'):
            scale = step['scale']
            return (int(scale[0]), int(scale[1])) if len(scale) == 2 else None
    return None


def ann_file_of(cfg) -> str:
    ev = cfg.test_evaluator
    return ev['ann_file'] if isinstance(ev, dict) else ev[0]['ann_file']


class _Evaluations:
    """The rows of one comparison and, per row, the predictions the bootstrap resamples."""

    def __init__(self, ann_file: str, num_images: Optional[int], bandwidth: float):
        self.ann_file, self.num_images, self.bandwidth = ann_file, num_images, bandwidth
        self.rows: List[dict] = []
        self.predictions: List[list] = []

    def add(self, method: str, setting: str, model, dataset, **kw) -> dict:
        """Evaluate ``model`` on ``dataset`` and append its row (returned)."""
        self.predictions.append([])
        metrics = evaluate_detector(model, dataset, ann_file=self.ann_file,
                                    bandwidth_mbps=[self.bandwidth], num_images=self.num_images,
                                    predictions_out=self.predictions[-1], **kw)
        self.rows.append(row(method, setting, metrics, self.bandwidth))
        return self.rows[-1]

    def add_bootstrap(self, resamples: int, cat_ids) -> None:
        """Per row: the mAP of every resample of the images (the same ones for every row)."""
        print(f'- bootstrap: {resamples} resamples of {len(self.predictions[0])} images',
              flush=True)
        boot = ImageBootstrap(self.ann_file, [p['img_id'] for p in self.predictions[0]],
                              resamples)
        for r, preds in zip(self.rows, self.predictions):
            samples = boot.sample_maps(boot.evaluate(preds, cat_ids))
            r['mAP_ci'] = [100 * v for v in boot.interval(samples)]
            r['mAP_samples'] = [round(100 * v, 4) for v in samples]


def _input_codec_rows(ev: _Evaluations, teacher, tcfg, image_codecs: Dict[str, Sequence[int]],
                      fit_to_input: bool) -> None:
    """The teacher on the images sent with every codec and quality (and fitted size)."""
    pipeline = tcfg.test_dataloader.dataset.pipeline
    fits = [None]
    if fit_to_input:
        size = detector_input_size(pipeline)
        if size is None:
            raise ValueError('fit_to_input: the test pipeline has no Resize with a (w, h) scale')
        fits.append(size)
    for codec, qualities in image_codecs.items():
        for fit in fits:
            method = input_codec_method(codec, fit is not None)
            for q in qualities:
                print(f'- {method} q={q}', flush=True)
                ds = build_test_dataset(tcfg, add_image_codec_baseline(pipeline, codec, q, fit))
                ev.add(method, f'q={q}', teacher, ds)


def _student_rows(ev: _Evaluations, students, variable_rate_students, dynamic_students,
                  data_root: Optional[str]) -> None:
    """Trained students: single-rate, every rate point of variable-rate ones, dynamic ones."""
    for name, config, ckpt in students:
        print(f'- {LEARNED} {name}', flush=True)
        scfg = load_config(config, data_root)
        model = build_detector(scfg.model, ckpt, partial='exits')  # a system's: its student
        ev.add(LEARNED, name, model, build_test_dataset(scfg))['codec'] = \
            model.compressor.codec_name
    for name, config, ckpt in variable_rate_students:
        scfg = load_config(config, data_root)
        model = build_detector(scfg.model, ckpt)
        if not hasattr(model.compressor, 'set_rate_point'):
            raise ValueError(f'{name}: {config} has no variable-rate compressor')
        vr_dataset = build_test_dataset(scfg)
        for r in range(model.compressor.num_rates):
            print(f'- {VARIABLE} {name} rate point {r}', flush=True)
            model.compressor.set_rate_point(r)
            ev.add(VARIABLE, f'{name} r={r}', model, vr_dataset)['codec'] = \
                model.compressor.codec_name
    for name, config, ckpt in dynamic_students:
        print(f'- {DYNAMIC} {name}', flush=True)
        model, scfg = calibrated_dynamic_model(config, ckpt, data_root)
        ev.add(DYNAMIC, name, model, build_test_dataset(scfg))


def _family_rows(ev: _Evaluations, family: str, teacher_config: str, teacher_checkpoint: str,
                 student_config: str, student_checkpoint: str,
                 family_codecs: Optional[Dict[str, Sequence[int]]],
                 data_root: Optional[str]) -> None:
    """Another detector family: its teacher, on the original and the sent images, and its
    KD student, as rows whose method starts with the family's name."""
    fcfg = load_config(teacher_config, data_root)
    f_ann = ann_file_of(fcfg)
    if f_ann != ev.ann_file:
        raise ValueError(f'{family}: {teacher_config} evaluates on {f_ann}, the main teacher on '
                         f'{ev.ann_file}; families are compared on the same images')
    fteacher = build_detector(fcfg.model, teacher_checkpoint)
    print(f'- {family}: teacher on original images', flush=True)
    ev.add(f'{family} teacher', 'original image', fteacher, build_test_dataset(fcfg), comm=False)
    f_pipeline = fcfg.test_dataloader.dataset.pipeline
    for codec, qualities in (family_codecs or {'webp': (5, 30)}).items():
        method = f'{family} {input_codec_method(codec, False)}'
        for q in qualities:
            print(f'- {method} q={q}', flush=True)
            ds = build_test_dataset(fcfg, add_image_codec_baseline(f_pipeline, codec, q))
            ev.add(method, f'q={q}', fteacher, ds)
    print(f'- {family}: {LEARNED}', flush=True)
    scfg = load_config(student_config, data_root)
    ev.add(f'{family} {LEARNED}', 'KD student', build_detector(scfg.model, student_checkpoint),
           build_test_dataset(scfg))


def run_rate_accuracy(teacher_config: str, teacher_checkpoint: str,
                      students: Sequence[Tuple[str, str, str]] = (),
                      image_codecs: Dict[str, Sequence[int]] = None,
                      fit_to_input: bool = False,
                      quantize_bits: Sequence[int] = (8, 4), split_after: int = 1,
                      data_root: Optional[str] = None, num_images: Optional[int] = None,
                      bandwidth: float = 1.0, bootstrap: int = 200,
                      variable_rate_students: Sequence[Tuple[str, str, str]] = (),
                      dynamic_students: Sequence[Tuple[str, str, str]] = (),
                      families: Sequence[Tuple[str, str, str, str, str]] = (),
                      family_codecs: Dict[str, Sequence[int]] = None) -> List[dict]:
    """Evaluate every method; ``students`` are (name, config, checkpoint) of trained students.

    ``image_codecs``: codec -> qualities (default: JPEG at 5..95). ``fit_to_input``: also send
    each image scaled down to the detector's input size (a no-op for images already that small).
    ``bootstrap``: resamples of the images (the same for every row) for 95 % intervals of each
    mAP (``mAP_ci``) and, in :func:`summarize`, of the key differences; 0 turns it off.
    ``variable_rate_students``: (name, config, checkpoint) of students with a
    ``VariableRateBottleneckNeck``; one row per rate point, one model.
    ``dynamic_students``: (name, config, checkpoint) of dynamic models (edge exit + router); the
    router is calibrated to its target offload ratio on the config's calibration split, then the
    system runs the real deployment path (bytes averaged over all images).
    ``families``: (family, teacher config, teacher checkpoint, student config, student
    checkpoint) of other detector families (e.g. RTMDet-tiny next to Faster R-CNN): their
    teacher on the original images and on ``family_codecs`` (default WebP q=5, 30: the best
    input codec on the synthetic set), and their KD student, as rows whose method starts with the
    family's name, on the same images; :func:`summarize` compares each family's student with its
    own teacher and its own input-codec front.
    """
    if image_codecs is None:
        image_codecs = {'jpeg': (5, 10, 20, 40, 70, 95)}
    tcfg = load_config(teacher_config, data_root)
    ev = _Evaluations(ann_file_of(tcfg), num_images, bandwidth)
    teacher = build_detector(tcfg.model, teacher_checkpoint)
    print('- teacher on original images', flush=True)
    dataset = build_test_dataset(tcfg)
    ev.add('teacher', 'original image', teacher, dataset, comm=False)
    _input_codec_rows(ev, teacher, tcfg, image_codecs, fit_to_input)
    for bits in quantize_bits:
        print(f'- {bits}-bit features (QuantizeNeck, split_after={split_after})', flush=True)
        model = build_detector(split_model_cfg(tcfg.model, split_after,
                                               dict(type='QuantizeNeck', n_bits=bits)),
                               teacher_checkpoint)
        ev.add(f'{bits}-bit features', f'split_after={split_after}', model, dataset)
    _student_rows(ev, students, variable_rate_students, dynamic_students, data_root)
    for family in families:
        _family_rows(ev, *family, family_codecs, data_root)
    if bootstrap:
        ev.add_bootstrap(bootstrap, dataset.cat_ids)
    return ev.rows


def calibrated_dynamic_model(config: str, checkpoint: str, data_root: Optional[str] = None):
    """A dynamic model calibrated on its config's calibration split exactly as
    RouterCalibrationHook does in the Runner (same images, same library call) -> (model, config)."""
    from ecc_mmdet.apis.inference import iter_batches
    from ecc_mmdet.deployment.calibration import calibrate_dynamic

    from .dynamic import load_dynamic, needs_calibration
    needs = needs_calibration(load_config(config, data_root))
    scfg, model, calib = load_dynamic(config, checkpoint, data_root, with_calibration_split=needs)
    if needs:
        hook = next(h for h in scfg.custom_hooks if h.get('type') == 'RouterCalibrationHook')
        n = min(hook.get('num_images') or len(calib), len(calib))
        out = calibrate_dynamic(model, lambda: iter_batches(model, calib, n, batch_size=4),
                                calib.ann_file, calib.cat_ids)
        if out is not None:
            print(f'  router threshold {out[0]:.4g}: offloads {out[1]:.0%} of {n} calibration '
                  'images', flush=True)
    return model, scfg


def _paired(a, b) -> Optional[List[float]]:
    """95 % interval of mAP(a) - mAP(b) over the shared resamples (None without them)."""
    if 'mAP_samples' not in a or 'mAP_samples' not in b:
        return None
    d = np.asarray(a['mAP_samples']) - np.asarray(b['mAP_samples'])
    return [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]


def _bd_rate_interval(inputs, learned) -> Optional[List[float]]:
    """95 % interval of the BD-rate of ``learned`` vs the anchor ``inputs`` (the input front,
    or another codec's students), recomputed on every resample."""
    if not inputs or not learned or any('mAP_samples' not in r for r in inputs + learned):
        return None
    vals = []
    for k in range(len(inputs[0]['mAP_samples'])):
        v = bd_rate([r['bytes_per_image'] for r in inputs], [r['mAP_samples'][k] for r in inputs],
                    [r['bytes_per_image'] for r in learned],
                    [r['mAP_samples'][k] for r in learned])
        if v is not None:
            vals.append(v)
    if len(vals) < 0.5 * len(inputs[0]['mAP_samples']):
        return None  # the curves often share no mAP range: no meaningful interval
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


def front_rows(rows):
    """The rows on the Pareto front (more bytes must buy more mAP), cheapest first."""
    out, best = [], float('-inf')
    for r in sorted(rows, key=lambda r: r['bytes_per_image']):
        if r['bbox_mAP'] > best:
            out.append(r)
            best = r['bbox_mAP']
    return out


def front_bytes_at(front, mAP: float) -> Optional[float]:
    """Bytes the input-codec front needs for ``mAP`` (log-bytes interpolated linearly in mAP
    between its points); None when the front does not reach that mAP or starts above it."""
    pts = [(r['bbox_mAP'], r['bytes_per_image']) for r in front]
    if not pts or mAP > pts[-1][0] or mAP < pts[0][0]:
        return None
    for (m0, b0), (m1, b1) in zip(pts, pts[1:]):
        if m0 <= mAP <= m1:
            t = 0.0 if m1 == m0 else (mAP - m0) / (m1 - m0)
            return float(np.exp(np.log(b0) + t * (np.log(b1) - np.log(b0))))
    return pts[0][1]  # a single-point front at exactly this mAP


def _curve(rows):
    return [r['bytes_per_image'] for r in rows], [r['bbox_mAP'] for r in rows]


def _label(r) -> str:
    method = r['method'][len(INPUT_PREFIX):] if r['method'].startswith(INPUT_PREFIX) else \
        r['method']
    return f"{method} {r['setting']}"


def codec_of(r) -> str:
    """The compressor of a learned row (rows written before the field existed were all
    factorized)."""
    return r.get('codec') or ('variable_rate_bottleneck' if r['method'] == VARIABLE
                              else 'entropy_bottleneck')


def map_at_bytes(rows, nbytes: float, slack: float = 0.05) -> Optional[float]:
    """mAP of the curve through ``rows`` at ``nbytes``, linear in log-bytes; within ``slack``
    (relative) beyond its ends the end point counts (the same bytes); None further out."""
    pts = sorted((r['bytes_per_image'], r['bbox_mAP']) for r in rows)
    if pts and pts[0][0] * (1 - slack) <= nbytes < pts[0][0]:
        return pts[0][1]
    if pts and pts[-1][0] < nbytes <= pts[-1][0] * (1 + slack):
        return pts[-1][1]
    for (b0, m0), (b1, m1) in zip(pts, pts[1:]):
        if b0 <= nbytes <= b1:
            if b1 == b0:
                return max(m0, m1)
            t = (math.log(nbytes) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return m0 + t * (m1 - m0)
    return None


def _variable_vs_single(rows) -> List[dict]:
    """Each variable-rate point against the best single-rate students of its codec (their
    Pareto front, whatever their training recipe) at its bytes."""
    out = []
    for r in rows:
        if r['method'] != VARIABLE:
            continue
        base = SINGLE_RATE_OF.get(codec_of(r))
        single = front_rows([s for s in rows if s['method'] == LEARNED and codec_of(s) == base])
        m = map_at_bytes(single, r['bytes_per_image']) if single else None
        out.append(dict(setting=r['setting'], bytes=r['bytes_per_image'], mAP=r['bbox_mAP'],
                        single_rate_codec=base, single_rate_mAP_at_bytes=m,
                        gap=None if m is None else m - r['bbox_mAP']))
    return out


def _input_front_figures(rows, inputs) -> dict:
    """The input-codec front, and every learned point against it at the same mAP."""
    front = front_rows(inputs)
    return dict(
        input_codec_front=[_label(r) for r in front],
        # every learned point against the front at the same mAP: how many times its bytes
        learned_vs_front_at_same_mAP=[
            dict(method=r['method'], setting=r['setting'], bytes=r['bytes_per_image'],
                 mAP=r['bbox_mAP'], front_bytes=fb,
                 ratio=None if fb is None else r['bytes_per_image'] / fb)
            for r in rows if r['method'] in LEARNED_KINDS
            for fb in [front_bytes_at(front, r['bbox_mAP'])]])


def _bd_rate_figures(rows, inputs, learned) -> dict:
    # bd_rate reduces the anchor to its Pareto front: over all input codecs, that is the front
    return dict(
        bd_rate_learned_vs_input_front=bd_rate(*_curve(inputs), *_curve(learned)),
        bd_rate_learned_vs_input_front_ci=_bd_rate_interval(inputs, learned),
        bd_rate_learned_vs={
            m: bd_rate(*_curve([r for r in inputs if r['method'] == m]), *_curve(learned))
            for m in dict.fromkeys(r['method'] for r in inputs)},
        bd_rate_by_codec_vs_input_front={
            c: bd_rate(*_curve(inputs), *_curve([r for r in rows if codec_of(r) == c and
                                                 r['method'] in (LEARNED, VARIABLE)]))
            for c in dict.fromkeys(codec_of(r) for r in rows
                                   if r['method'] in (LEARNED, VARIABLE))})


def _bd_rate_between_codecs(rows) -> dict:
    """'B vs A': the BD-rate of learned codec B's students against codec A's (the anchor), with
    its interval, for every pair of codecs with two or more single-rate students each."""
    by_codec = {}
    for r in rows:
        if r['method'] == LEARNED:
            by_codec.setdefault(codec_of(r), []).append(r)
    by_codec = {c: rs for c, rs in by_codec.items() if len(rs) > 1}
    return {f'{b} vs {a}': dict(bd_rate=bd_rate(*_curve(ra), *_curve(rb)),
                                ci=_bd_rate_interval(ra, rb))
            for b, rb in by_codec.items() for a, ra in by_codec.items() if a != b}


def _variable_rate_figures(rows, inputs, learned) -> dict:
    s = dict(variable_rate_vs_single_rate=_variable_vs_single(rows))
    variable = [r for r in rows if r['method'] == VARIABLE]
    if inputs and variable:
        s['bd_rate_variable_rate_vs_input_front'] = bd_rate(*_curve(inputs), *_curve(variable))
        if learned:
            s['bd_rate_variable_rate_vs_single_rate_students'] = bd_rate(*_curve(learned),
                                                                         *_curve(variable))
    return s


def _cheapest_within_1_mAP(teacher_mAP: float, inputs, learned) -> dict:
    """The cheapest input-codec setting and student within TARGET_MAP_GAP of the teacher, and
    the student's bytes as a fraction of the input codec's."""
    floor = teacher_mAP - TARGET_MAP_GAP
    good_in = [r for r in inputs if r['bbox_mAP'] >= floor]
    good_learned = [r for r in learned if r['bbox_mAP'] >= floor]
    s = {}
    if good_in:
        c = min(good_in, key=lambda r: r['bytes_per_image'])
        s['cheapest_input_within_1_mAP'] = dict(setting=_label(c), bytes=c['bytes_per_image'],
                                                mAP=c['bbox_mAP'])
    if good_learned:
        c = min(good_learned, key=lambda r: r['bytes_per_image'])
        s['cheapest_learned_within_1_mAP'] = dict(setting=c['setting'],
                                                  bytes=c['bytes_per_image'], mAP=c['bbox_mAP'])
        if good_in:
            ci = min(good_in, key=lambda r: r['bytes_per_image'])
            s['mAP_learned_minus_input_within_1_mAP_ci'] = _paired(c, ci)
            s['bytes_ratio_learned_to_input_within_1_mAP'] = \
                c['bytes_per_image'] / s['cheapest_input_within_1_mAP']['bytes']
    return s


def _targets(s: dict) -> dict:
    """The project's targets, met or not, from the summary's figures."""
    bd = s.get('bd_rate_learned_vs_input_front')
    ratio = s.get('bytes_ratio_learned_to_input_within_1_mAP')
    targets = dict(
        bd_rate_vs_input_front_le_minus_50pct=bd is not None and bd <= TARGET_BD_RATE,
        # met when a student is within 1 mAP at <= 1/4 of the cheapest input codec that is, or
        # when a student is within 1 mAP and no input codec is at all
        within_1_mAP_at_quarter_bytes='cheapest_learned_within_1_mAP' in s and (
            ratio <= TARGET_BYTES_RATIO if ratio is not None
            else 'cheapest_input_within_1_mAP' not in s),
        edge_flops_at_most_15pct=(s['best_learned_edge_flops_fraction'] or 1) <= TARGET_EDGE_FLOPS)
    by_model = {}
    for v in s['variable_rate_vs_single_rate']:
        by_model.setdefault(v['setting'].rsplit(' r=', 1)[0], []).append(v['gap'])
    if by_model:
        # met when some variable-rate model has every point within the gap of its single-rate
        # students (a point outside their byte range cannot be compared: not met)
        targets['variable_rate_within_0.5_mAP_of_single_rate'] = any(
            all(g is not None and g <= TARGET_VARIABLE_RATE_GAP for g in gaps)
            for gaps in by_model.values())
    return targets


def summarize(rows):
    teacher = next(r for r in rows if r['method'] == 'teacher')
    inputs = [r for r in rows if r['method'].startswith(INPUT_PREFIX)]
    learned = [r for r in rows if r['method'] == LEARNED]
    t_map = teacher['bbox_mAP']
    s = dict(teacher_mAP=t_map)
    if inputs:
        s.update(_input_front_figures(rows, inputs))
    if inputs and learned:
        s.update(_bd_rate_figures(rows, inputs, learned))
    s.update(_variable_rate_figures(rows, inputs, learned))
    s['bd_rate_between_codecs'] = _bd_rate_between_codecs(rows)
    s['families'] = _family_summaries(rows)
    if not learned:
        return s
    best = max(learned, key=lambda r: r['bbox_mAP'])
    s['best_learned'] = best['setting']
    s['best_learned_mAP_gap_to_teacher'] = t_map - best['bbox_mAP']
    s['best_learned_mAP_gap_to_teacher_ci'] = _paired(teacher, best)
    s.update(_cheapest_within_1_mAP(t_map, inputs, learned))
    whole = (best['edge_gflops'] or 0) + (best['cloud_gflops'] or 0)
    s['best_learned_edge_flops_fraction'] = (best['edge_gflops'] / whole) if whole else None
    s['targets'] = _targets(s)
    return s


def _family_summaries(rows) -> Dict[str, dict]:
    """Per family (rows named '<family> teacher' / '<family> cloud-only ...' / '<family>
    learned bottleneck', and the main family's unprefixed rows as 'main'): the student's bytes,
    mAP and edge FLOPs share, its gap to its own teacher and its bytes against its own
    input-codec front at the same mAP."""
    out = {}
    names = ['main'] + [r['method'][:-len(' teacher')] for r in rows
                        if r['method'].endswith(' teacher')]
    for fam in names:
        pre = '' if fam == 'main' else fam + ' '
        teacher = next((r for r in rows if r['method'] == pre + 'teacher'), None)
        students = [r for r in rows if r['method'] == pre + LEARNED]
        inputs = [r for r in rows if r['method'].startswith(pre + INPUT_PREFIX)]
        if teacher is None or not students:
            continue
        st = max(students, key=lambda r: r['bbox_mAP'])
        whole = (st['edge_gflops'] or 0) + (st['cloud_gflops'] or 0)
        fb = front_bytes_at(front_rows(inputs), st['bbox_mAP']) if inputs else None
        out[fam] = dict(teacher_mAP=teacher['bbox_mAP'], student=st['setting'],
                        student_bytes=st['bytes_per_image'], student_mAP=st['bbox_mAP'],
                        gap_to_teacher=teacher['bbox_mAP'] - st['bbox_mAP'],
                        gap_to_teacher_ci=_paired(teacher, st),
                        edge_flops_fraction=(st['edge_gflops'] / whole) if whole else None,
                        input_front_bytes_at_student_mAP=fb,
                        bytes_ratio_to_input_front=None if fb is None else
                        st['bytes_per_image'] / fb)
    return out


def _fmt(v, spec):
    if isinstance(v, (int, float)):
        return format(v, spec)
    return format('-', '>' + spec.split('.')[0])


def _front_ratio(r, front) -> str:
    """A learned row's bytes over the input-codec front's at its mAP ('-' for the others;
    'n/r' where the front does not reach that mAP)."""
    if r['method'] not in LEARNED_KINDS or not front:
        return '-'
    fb = front_bytes_at(front, r['bbox_mAP'])
    return 'n/r' if fb is None else f"{r['bytes_per_image'] / fb:.2f}x"


def _row_lines(rows, bandwidth) -> List[str]:
    width = max([18] + [len(r['setting']) + 2 for r in rows])
    mwidth = max([20] + [len(r['method']) + 2 for r in rows])
    front = front_rows([r for r in rows if r['method'].startswith(INPUT_PREFIX)])
    lines = [f"{'method':<{mwidth}}{'setting':<{width}}{'KB/image':>10}{'bbox mAP':>10}"
             f"{'95% CI':>14}{'mAP@50':>8}{'edge GFLOPs':>12}"
             f"{f'latency ms @{bandwidth:g}Mb/s':>22}{'vs front':>10}"]
    for r in rows:
        ci = r.get('mAP_ci')
        ci = f'[{ci[0]:.1f}, {ci[1]:.1f}]' if ci else '-'
        lines.append(f"{r['method']:<{mwidth}}{r['setting']:<{width}}"
                     f"{_fmt(r['bytes_per_image'] / 1000, '10.2f')}{r['bbox_mAP']:>10.1f}"
                     f"{ci:>14}{r['bbox_mAP_50']:>8.1f}{_fmt(r['edge_gflops'], '12.3f')}"
                     f"{_fmt(r['latency_ms'], '22.1f')}{_front_ratio(r, front):>10}")
    if front:
        lines.append("vs front: a learned row's bytes / the bytes the input-codec front (all "
                     "image codecs' Pareto front) needs for the same mAP; n/r: it does not "
                     "reach that mAP")
    return lines


def _bd_rate_lines(summary) -> List[str]:
    lines = []
    if summary.get('bd_rate_learned_vs_input_front') is not None:
        ci = summary.get('bd_rate_learned_vs_input_front_ci')
        ci = f' (95% CI [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] %)' if ci else ''
        lines.append(f"BD-rate learned bottleneck vs the Pareto front of all input codecs: "
                     f"{100 * summary['bd_rate_learned_vs_input_front']:+.1f} %{ci}")
    if 'best_learned' in summary:
        ci = summary.get('best_learned_mAP_gap_to_teacher_ci')
        ci = f' (95% CI [{ci[0]:.1f}, {ci[1]:.1f}])' if ci else ''
        lines.append(f"best student ({summary['best_learned']}) is "
                     f"{summary['best_learned_mAP_gap_to_teacher']:.1f} mAP below the teacher{ci}")
    for key, what in (('bd_rate_variable_rate_vs_input_front',
                       'variable-rate student vs the input-codec front'),
                      ('bd_rate_variable_rate_vs_single_rate_students',
                       'variable-rate student vs the single-rate students')):
        if summary.get(key) is not None:
            lines.append(f'BD-rate {what}: {100 * summary[key]:+.1f} %')
    for codec, bd in (summary.get('bd_rate_by_codec_vs_input_front') or {}).items():
        if bd is not None:
            lines.append(f'BD-rate {codec} (all its students and rate points) vs the input-codec '
                         f'front: {100 * bd:+.1f} %')
    for pair, v in (summary.get('bd_rate_between_codecs') or {}).items():
        if v['bd_rate'] is not None:
            ci = f" (95% CI [{100 * v['ci'][0]:+.1f}, {100 * v['ci'][1]:+.1f}] %)" \
                if v['ci'] else ''
            lines.append(f"BD-rate {pair} (single-rate students): {100 * v['bd_rate']:+.1f} %{ci}")
    return lines


def _point_lines(summary) -> List[str]:
    """Variable-rate points vs single-rate students, learned points vs the input front."""
    lines = []
    for v in summary.get('variable_rate_vs_single_rate') or []:
        vs = ('outside their byte range' if v['gap'] is None else
              f"they reach {v['single_rate_mAP_at_bytes']:.1f} there, {v['gap']:+.1f} mAP")
        lines.append(f"variable-rate {v['setting']}: {v['bytes'] / 1000:.2f} KB at {v['mAP']:.1f} "
                     f"mAP vs the single-rate {v['single_rate_codec']} students: {vs}")
    for p in summary.get('learned_vs_front_at_same_mAP') or []:
        vs = ('the input-codec front does not reach that mAP' if p['front_bytes'] is None else
              f"the input-codec front needs {p['front_bytes'] / 1000:.2f} KB: "
              f"{p['ratio']:.2f}x")
        lines.append(f"{p['method']} {p['setting']}: {p['bytes'] / 1000:.2f} KB at "
                     f"{p['mAP']:.1f} mAP; {vs}")
    return lines


def _family_lines(summary) -> List[str]:
    lines = []
    fams = summary.get('families') or {}
    if len(fams) > 1:
        for fam, f in fams.items():
            ci = f['gap_to_teacher_ci']
            ci = f' (95% CI [{ci[0]:.1f}, {ci[1]:.1f}])' if ci else ''
            vs = ('its input-codec front does not reach that mAP'
                  if f['bytes_ratio_to_input_front'] is None else
                  f"{f['bytes_ratio_to_input_front']:.2f}x its input-codec front's bytes")
            lines.append(f"{'main family' if fam == 'main' else fam} student: "
                         f"{f['student_bytes'] / 1000:.2f} KB at {f['student_mAP']:.1f} mAP, "
                         f"{f['gap_to_teacher']:.1f} below its teacher{ci}, {vs}, edge "
                         f"{100 * (f['edge_flops_fraction'] or 0):.0f} % of its FLOPs")
    return lines


def table(rows, summary, bandwidth) -> str:
    lines = (_row_lines(rows, bandwidth) + _bd_rate_lines(summary) + _point_lines(summary) +
             _family_lines(summary))
    for method, bd in (summary.get('bd_rate_learned_vs') or {}).items():
        if bd is not None:
            lines.append(f'BD-rate learned bottleneck vs {method}: {100 * bd:+.1f} %')
    if 'targets' in summary:
        lines.append('targets: ' + ', '.join(f"{k}: {'met' if v else 'MISSED'}"
                                             for k, v in summary['targets'].items()))
    return '\n'.join(lines)


#: a learned row's compressor (its ``codec``) -> the name of its family's series
FAMILY_OF_CODEC = {
    'entropy_bottleneck': 'factorized students (EntropyBottleneckNeck)',
    'hyperprior_bottleneck': 'hyperprior students (HyperpriorBottleneckNeck)',
    'channel_context_hyperprior': 'channel-context hyperprior (ChannelContextHyperpriorNeck)',
    'variable_rate_bottleneck': 'variable-rate factorized (VariableRateBottleneckNeck)',
    'variable_rate_hyperprior': 'variable-rate hyperprior (VariableRateHyperpriorNeck)',
    'variable_rate_channel_context': 'variable-rate channel context '
                                     '(VariableRateChannelContextNeck)'}
#: series kind (input codec, 'features', learned codec, method) -> (colour, marker)
SERIES_STYLE = {'JPEG': ('tab:blue', 'o'), 'WebP': ('tab:orange', 'D'),
                'AVIF': ('tab:green', 'P'), 'features': ('0.35', '^'),
                'entropy_bottleneck': ('tab:red', 's'),
                'hyperprior_bottleneck': ('tab:purple', 'p'),
                'channel_context_hyperprior': ('black', 'o'),
                'variable_rate_bottleneck': ('tab:brown', '*'),
                'variable_rate_hyperprior': ('tab:pink', 'X'),
                'variable_rate_channel_context': ('0.55', 'X'), DYNAMIC: ('tab:olive', 'h')}
#: for kinds not above, in turn
OTHER_STYLES = (('tab:cyan', 'v'), ('darkgoldenrod', '<'), ('teal', '>'), ('navy', 'd'),
                ('tab:gray', 'H'))


def _series_of(r, method: str) -> Tuple[str, str, str]:
    """(kind, label, variant) of row ``r`` whose method, without a family prefix, is ``method``."""
    if method.startswith(INPUT_PREFIX):
        codec = method[len(INPUT_PREFIX):]
        if codec.endswith(' (fitted)'):
            codec = codec[:-len(' (fitted)')]
            return codec, f'{codec} image, fitted to the detector input', 'fitted'
        return codec, f'{codec} image', ''
    if method.endswith(' features'):
        return 'features', 'features, n-bit / float16 (no training)', ''
    if method in (LEARNED, VARIABLE):
        codec = codec_of(r)
        return codec, FAMILY_OF_CODEC.get(codec, f'{method} ({codec})'), ''
    return method, method, ''


def plot_series(rows) -> Dict[str, dict]:
    """The rows as the plot's series, label -> dict(kind, variant, rows), in order of first
    appearance: input codecs by codec and image size, raw features together, learned students
    by compressor family, other rows by method; another detector family's rows (methods
    '<family> ...') as series of their own. Teachers are reference lines, not series."""
    fams = [r['method'][:-len(' teacher')] for r in rows
            if r['method'].endswith(' teacher')]
    out = {}
    for r in rows:
        if r['method'] == 'teacher' or r['method'].endswith(' teacher'):
            continue
        fam = next((f for f in fams if r['method'].startswith(f + ' ')), None)
        kind, label, variant = _series_of(r, r['method'][len(fam) + 1:] if fam else r['method'])
        if fam:
            label, variant = f'{fam}: {label}', 'family'
        out.setdefault(label, dict(kind=kind, variant=variant, rows=[]))['rows'].append(r)
    return out


def _draw_series(ax, label: str, s: dict, style) -> None:
    """Every point (95 % CI bars where the rows have them), the line through its Pareto front
    only: students of one family from different recipes do not zig-zag."""
    color, marker = style
    rows = sorted(s['rows'], key=lambda r: r['bytes_per_image'])
    front = front_rows(rows)
    kw = dict(color=color, marker=marker, ms=9 if marker == '*' else 6,
              mfc='white' if s['variant'] else color, mew=1.2)
    ls = {'fitted': '--', 'family': ':'}.get(s['variant'], '-')
    ax.plot([r['bytes_per_image'] / 1000 for r in front], [r['bbox_mAP'] for r in front],
            ls=ls, lw=1.5, label=label, **kw)
    off = [r for r in rows if all(r is not f for f in front)]
    if off:
        ax.plot([r['bytes_per_image'] / 1000 for r in off], [r['bbox_mAP'] for r in off],
                ls='none', label='_nolegend_', **kw)
    ci = [r for r in rows if r.get('mAP_ci')]
    if ci:
        ax.errorbar([r['bytes_per_image'] / 1000 for r in ci], [r['bbox_mAP'] for r in ci],
                    yerr=[[max(0.0, r['bbox_mAP'] - r['mAP_ci'][0]) for r in ci],
                          [max(0.0, r['mAP_ci'][1] - r['bbox_mAP']) for r in ci]],
                    fmt='none', ecolor=color, elinewidth=0.8, alpha=0.45, capsize=2)
    if s['kind'] == 'features':
        for r in rows:
            ax.annotate(r['method'].split()[-2], (r['bytes_per_image'] / 1000, r['bbox_mAP']),
                        textcoords='offset points', xytext=(-5, -6), ha='right', va='top',
                        fontsize=7, color=color)


def _teacher_lines(ax, rows) -> None:
    """Each teacher on the original images: a horizontal line, named in the legend and on it
    (the main teacher's name above its line, other families' below theirs: no overlap)."""
    for r in rows:
        if r['method'] != 'teacher' and not r['method'].endswith(' teacher'):
            continue
        main = r['method'] == 'teacher'
        color = 'k' if main else '0.45'
        ax.axhline(r['bbox_mAP'], color=color, ls='--' if main else ':', lw=1,
                   label=f"{r['method']}, original image ({r['bbox_mAP']:.1f} mAP)")
        ax.annotate(f"{r['method']} (original image)", (0.01, r['bbox_mAP']), fontsize=7,
                    color=color, xycoords=ax.get_yaxis_transform(), textcoords='offset points',
                    xytext=(2, 2 if main else -3), va='bottom' if main else 'top')


def plot(rows, path, title: Optional[str] = None):
    """Rate-accuracy figure: bbox mAP against uplink KB per image (log), one series per input
    codec and per compressor family, the teachers as reference lines."""
    from .plotting import kb_log_axis, legend_beside, pyplot, save
    fig, ax = pyplot().subplots(figsize=(7.2, 4.8))
    _teacher_lines(ax, rows)
    others = itertools.cycle(OTHER_STYLES)
    for label, s in plot_series(rows).items():
        _draw_series(ax, label, s, SERIES_STYLE.get(s['kind']) or next(others))
    front = front_rows([r for r in rows if r['method'].startswith(INPUT_PREFIX)])
    if len({r['method'] for r in front}) > 1:  # a front of one codec is that codec's line
        ax.plot([r['bytes_per_image'] / 1000 for r in front], [r['bbox_mAP'] for r in front],
                '-', color='0.5', lw=6, alpha=0.3, zorder=0,
                label='Pareto front of the input codecs')
    kb_log_axis(ax, [r['bytes_per_image'] / 1000 for r in rows if r['bytes_per_image'] > 0])
    ax.set_ylabel('bbox mAP (COCO, %)')
    ax.set_title(title or 'Rate-accuracy: detection accuracy vs bytes sent per image')
    ax.grid(True, alpha=0.3)
    note = 'lines join each series\' non-dominated points' + (
        '\nbars: 95 % bootstrap CI' if any(r.get('mAP_ci') for r in rows) else '')
    legend_beside(ax, title=note, title_fontsize=7)
    save(fig, path)
