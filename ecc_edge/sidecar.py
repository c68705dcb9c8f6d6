"""The light edge's sidecar (``edge.json``): its schema, checksum and optional signature.

The sidecar steers the runtime (resize, normalisation, coding tables, strides, exit anchors,
router threshold), so every field is checked before any is used: type, range, and consistency
with the other fields and with the graph's inputs and outputs (:func:`check_graph_io`, and
:func:`check_probe` on one probe run). Anything else is refused with a :class:`SidecarError`
whose message starts with the field's dotted name (``preprocess.std[1]: ...``). The schema is
plain Python (no dependency): the validators below, one per JSON type.

``sidecar_sha256`` (SHA-256 of the canonical JSON) catches accidents only: whoever edits the file
can recompute it. An edge that must run only its operator's exports verifies
``sidecar_hmac_sha256``, an HMAC-SHA256 with a key the operator provides (``--sidecar-key-file``
on the exporter and the edge): with a key, an unsigned or badly signed sidecar is refused.
"""
import hashlib
import hmac
import json
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['EdgeRuntimeError', 'SIDECAR_FORMAT', 'SIDECAR_VERSION', 'SIGNATURE_FIELD',
           'SidecarError', 'check_graph_io', 'check_probe', 'expected_outputs', 'load_sidecar',
           'probe_side', 'read_key_file', 'sidecar_digest', 'sign_sidecar', 'validate_sidecar']

SIDECAR_FORMAT = 'ecc_edge_sidecar'
SIDECAR_VERSION = 1
DIGEST_FIELD = 'sidecar_sha256'
SIGNATURE_FIELD = 'sidecar_hmac_sha256'
MIN_KEY_BYTES = 16
#: codec ids the runtime codes with (ecc_edge.codecs.bitstream.CodecId): the learned bottlenecks
#: and hyperpriors
_CODECS = {1: 'ENTROPY_BOTTLENECK', 5: 'VARIABLE_RATE_BOTTLENECK', 6: 'HYPERPRIOR_BOTTLENECK',
           7: 'VARIABLE_RATE_HYPERPRIOR', 8: 'CHANNEL_CONTEXT_HYPERPRIOR',
           9: 'VARIABLE_RATE_CHANNEL_CONTEXT'}
_VARIABLE_RATE, _HYPERPRIOR, _CHANNEL_CONTEXT = (5, 7, 9), (6, 7, 8, 9), (8, 9)
_ROUTERS = ('EmptyExitRouter', 'EntropyRouter', 'LearnedRouter', 'RandomRouter',
            'ScoreBandRouter', 'ShiftRouter')
#: routers whose score also reads F_k's channel statistics (the graph's ``feature_stats``)
_STATS_ROUTERS = ('ShiftRouter', )

Check = Callable[[object, str], None]


class EdgeRuntimeError(ValueError):
    """A graph or sidecar the runtime cannot use, or an image it cannot read."""


class SidecarError(EdgeRuntimeError):
    """A sidecar field is missing, of the wrong type or range, or inconsistent; the message
    starts with the field's dotted name."""


def _fail(path: str, what: str):
    raise SidecarError(f'{path}: {what}')


def _show(v) -> str:
    text = json.dumps(v) if isinstance(v, (dict, list, str)) else repr(v)
    return text if len(text) <= 40 else text[:37] + '...'


# ------------------------------------------------------------------ validators
def Int(lo: int, hi: int) -> Check:
    def check(v, path):
        if not isinstance(v, int) or isinstance(v, bool):
            _fail(path, f'must be an integer, got {_show(v)}')
        if not lo <= v <= hi:
            _fail(path, f'must be in [{lo}, {hi}], got {v}')
    return check


def Num(lo: float = -math.inf, hi: float = math.inf, finite: bool = True) -> Check:
    """A JSON number in [lo, hi] (never NaN; +-Infinity only when not ``finite``)."""
    def check(v, path):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            _fail(path, f'must be a number, got {_show(v)}')
        try:
            f = float(v)
        except OverflowError:
            _fail(path, f'out of range: {_show(v)}')
        if math.isnan(f):
            _fail(path, 'must be a number, got NaN')
        if finite and math.isinf(f):
            _fail(path, f'must be a finite number, got {v}')
        if not lo <= f <= hi:
            _fail(path, f'must be in [{lo}, {hi}], got {v}')
    return check


def Bool(v, path):
    if not isinstance(v, bool):
        _fail(path, f'must be true or false, got {_show(v)}')


def Str(max_len: int = 200, choices: Sequence[str] = (), hex_len: int = 0) -> Check:
    def check(v, path):
        if not isinstance(v, str) or not 0 < len(v) <= max_len:
            _fail(path, f'must be a non-empty string of at most {max_len} characters, got '
                  f'{_show(v)}')
        if choices and v not in choices:
            _fail(path, f'must be one of {", ".join(choices)}, got {_show(v)}')
        if hex_len and (len(v) != hex_len or v.strip('0123456789abcdef')):
            _fail(path, f'must be {hex_len} lower-case hex digits, got {_show(v)}')
    return check


def Arr(item: Check, min_len: int = 1, max_len: int = 1 << 16) -> Check:
    def check(v, path):
        if not isinstance(v, list):
            _fail(path, f'must be a list, got {_show(v)}')
        if not min_len <= len(v) <= max_len:
            _fail(path, f'must have {min_len}' + (f'..{max_len}' if max_len != min_len else '')
                  + f' entries, got {len(v)}')
        for i, x in enumerate(v):
            item(x, f'{path}[{i}]')
    return check


def Ints(lo: int, hi: int, min_len: int = 1, max_len: int = 1 << 24) -> Check:
    """A flat list of integers in [lo, hi], checked in one pass (weights: 10**5 entries)."""
    def check(v, path):
        if not isinstance(v, list) or not min_len <= len(v) <= max_len:
            _fail(path, f'must be a list of {min_len}..{max_len} integers, got {_show(v)}')
        if not all(type(x) is int for x in v) or (v and not lo <= min(v) <= max(v) <= hi):
            i = next(i for i, x in enumerate(v) if type(x) is not int or not lo <= x <= hi)
            _fail(f'{path}[{i}]', f'must be an integer in [{lo}, {hi}], got {_show(v[i])}')
    return check


def Opt(check: Check) -> Check:
    def opt(v, path):
        if v is not None:
            check(v, path)
    return opt


def Obj(**fields: Check) -> Check:
    """A JSON object with exactly these fields."""
    def check(v, path):
        if not isinstance(v, dict):
            _fail(path, f'must be an object, got {_show(v)}')
        _check_fields(v, fields, path + '.')
    return check


def _check_fields(obj: Dict, fields: Dict[str, Check], prefix: str = '') -> None:
    for k in obj:
        if k not in fields:
            _fail(f'{prefix}{k}', 'unknown field (this runtime reads '
                  f'{", ".join(sorted(fields))})')
    for k, check in fields.items():
        if k not in obj:
            _fail(f'{prefix}{k}', 'missing')
        check(obj[k], f'{prefix}{k}')


# ------------------------------------------------------------------ the schema
_HEX64 = Str(64, hex_len=64)
_SCORE_MAP = Obj(x=Arr(Num(-1e6, 1e6), 1, 1 << 20), y=Arr(Num(0.0, 1.0), 1, 1 << 20))
_PREPROCESS = Obj(
    resize=Opt(Obj(scale=Arr(Int(1, 8192), 2, 2), keep_ratio=Bool)),
    bgr_to_rgb=Bool, mean=Arr(Num(-1e4, 1e4), 3, 3), std=Arr(Num(1e-3, 1e4), 3, 3),
    pad_size_divisor=Int(1, 1024), pad_value=Num(-1e4, 1e4))
_CODEC = Obj(
    codec_id=Int(0, 255), name=Str(), rate_point=Opt(Int(0, 254)),
    latent_channels=Int(1, 4096), downsample=Int(1, 64),
    medians=Arr(Num(-1e6, 1e6), 1, 4096), offsets=Arr(Int(-2**31, 2**31 - 1), 1, 4096),
    lengths=Arr(Int(2, 2**16 + 1), 1, 4096),
    pmf_table=Arr(Arr(Int(0, 2**32), 2, 2**16 + 1), 1, 4096),
    tables_fingerprint=Int(-2**63, 2**63 - 1))
_EXIT = Obj(
    kind=Str(), num_classes=Int(1, 10000), num_anchors=Int(1, 4096),
    cls_out_channels=Int(1, 10000), score_factors=Bool,
    anchors=Obj(strides=Arr(Arr(Num(1, 1024), 2, 2), 1, 16),
                ratios=Arr(Num(1e-3, 1e3), 1, 64), scales=Arr(Num(1e-3, 1e4), 1, 64),
                octave_base_scale=Opt(Num(1e-3, 1e4)), scales_per_octave=Opt(Int(1, 64)),
                center_offset=Num(0.0, 1.0),
                base_anchors=Arr(Arr(Arr(Num(-1e5, 1e5), 4, 4), 1, 4096), 1, 16)),
    bbox_coder=Obj(means=Arr(Num(-1e3, 1e3), 4, 4), stds=Arr(Num(1e-6, 1e3), 4, 4),
                   clip_border=Bool, wh_ratio_clip=Num(1e-9, 1.0), max_ratio=Num(0.0, 100.0)),
    test_cfg=Obj(nms_pre=Int(-1, 10**6), score_thr=Num(0.0, 1.0),
                 min_bbox_size=Num(-1.0, 1e5), iou_threshold=Num(0.0, 1.0),
                 max_per_img=Int(1, 10**5)))
_TABLES = dict(offsets=Arr(Int(-2**31, 2**31 - 1), 1, 4096),
               lengths=Arr(Int(2, 2**16 + 1), 1, 4096),
               pmf_table=Arr(Arr(Int(0, 2**32), 2, 2**16 + 1), 1, 4096))
_INT_LAYER = Obj(in_channels=Int(1, 4096), out_channels=Int(1, 8192),
                 weight=Ints(-2**40, 2**40), bias=Ints(-2**52, 2**52))
_HYPERPRIOR_FIELDS = dict(
    hyper_channels=Int(1, 4096), hyper_downsample=Int(2, 4),
    synthesis=Obj(layers=Arr(_INT_LAYER, 2, 3), frac_bits=Int(4, 12), act_max=Num(1.0, 2.0**20),
                  mean_max=Num(1.0, 2.0**20), predict_means=Bool),
    index_thresholds=Ints(-2**52, 2**52, 1, 255), gaussian=Obj(**_TABLES))
_HYPERPRIOR_SPEC = Obj(**_HYPERPRIOR_FIELDS)
_CONTEXT_SPEC = Obj(**_HYPERPRIOR_FIELDS, channel_context=Obj(
    num_slices=Int(2, 16), transforms=Arr(Obj(layers=Arr(_INT_LAYER, 2, 3)), 2, 16)))
_FLOATS = Arr(Num(-3.4e38, 3.4e38), 1, 1 << 16)  # float32 values
_ROUTER_PARAMS = {
    'EntropyRouter': dict(top_k=Int(1, 10**6)),
    'EmptyExitRouter': dict(top_k=Int(1, 10**6), empty_below=Num(0.0, 1.0)),
    'ScoreBandRouter': dict(low=Num(0.0, 1.0), high=Num(0.0, 1.0)),
    'RandomRouter': dict(seed=Int(-2**63, 2**63 - 1)),
    'ShiftRouter': dict(top_k=Int(1, 10**6), empty_below=Num(0.0, 1.0), flag_empty=Bool,
                        stats_mean=_FLOATS, stats_std=Arr(Num(1e-12, 3.4e38), 1, 1 << 16),
                        ood_above=Num(0.0, 3.4e38)),
    'LearnedRouter': dict(top_k=Int(1, 4096), count_thresholds=Arr(Num(0.0, 1.0), 0, 64),
                          count_scale=Num(1e-6, 1e6), feat_mean=_FLOATS,
                          feat_std=Arr(Num(1e-12, 3.4e38), 1, 1 << 16),
                          layers=Arr(Obj(weight=Arr(_FLOATS, 1, 4096), bias=_FLOATS), 1, 8),
                          gain=Opt(Obj(anchor_thresholds=Arr(Num(0.0, 1.0), 0, 64),
                                       score_bands=Arr(Num(0.0, 2.0), 2, 64))))}
_TOP = dict(
    format=Str(choices=(SIDECAR_FORMAT, )), version=Int(SIDECAR_VERSION, SIDECAR_VERSION),
    graph_sha256=_HEX64, model_fingerprint=Str(16, hex_len=16), preprocess=_PREPROCESS,
    codec=_CODEC, feature_strides=Arr(Int(1, 64), 1, 8),
    class_names=Opt(Arr(Str(), 1, 10000)), sidecar_sha256=_HEX64)
_DYNAMIC = dict(exit=_EXIT, router=lambda v, path: _check_router(v),
                score_maps=Opt(Obj(edge=_SCORE_MAP, cloud=_SCORE_MAP)),
                edge_report=Opt(Obj(score_thr=Num(0.0, 1.0), max_boxes=Int(1, 1000))))


def _check_router(router) -> None:
    if not isinstance(router, dict):
        _fail('router', f'must be an object, got {_show(router)}')
    if 'kind' not in router:
        _fail('router.kind', 'missing')
    Str(choices=_ROUTERS)(router['kind'], 'router.kind')  # then its own parameters
    if router['kind'] == 'LearnedRouter':
        router = dict(router, gain=router.get('gain'))  # optional: without gain features
    fields = dict(kind=Str(choices=_ROUTERS), threshold=Num(finite=False),
                  **_ROUTER_PARAMS[router['kind']])
    _check_fields(router, fields, 'router.')
    if router['kind'] == 'ScoreBandRouter' and not router['low'] < router['high']:
        _fail('router.low', f'must be below router.high ({router["low"]} >= {router["high"]})')
    if router['kind'] == 'LearnedRouter':
        _check_mlp(router)
    if router['kind'] == 'ShiftRouter' and len(router['stats_mean']) != len(router['stats_std']):
        _fail('router.stats_std', f'has {len(router["stats_std"])} entries, router.stats_mean '
              f'{len(router["stats_mean"])}')


def _check_mlp(r: Dict) -> None:
    """The learned router's features (2 x top_k + the counts [+ the gain features]) chain
    through its layers to one score."""
    width = 2 * r['top_k'] + len(r['count_thresholds'])
    g = r['gain']
    if g is not None:
        if list(g['score_bands']) != sorted(g['score_bands']):
            _fail('router.gain.score_bands', 'must be increasing')
        width += 2 + len(g['anchor_thresholds']) + len(g['score_bands']) - 1
    for name in ('feat_mean', 'feat_std'):
        if len(r[name]) != width:
            _fail(f'router.{name}', f'has {len(r[name])} entries; 2 x router.top_k + '
                  f'len(router.count_thresholds) (+ the gain features) need {width}')
    for i, layer in enumerate(r['layers']):
        rows = layer['weight']
        if any(len(row) != width for row in rows):
            _fail(f'router.layers[{i}].weight', f'rows must hold {width} inputs')
        if len(layer['bias']) != len(rows):
            _fail(f'router.layers[{i}].bias', f'has {len(layer["bias"])} entries, the weight '
                  f'{len(rows)} rows')
        width = len(rows)
    if width != 1:
        _fail(f'router.layers[{len(r["layers"]) - 1}].weight', f'gives {width} outputs; the '
              'router scores with one')


def _check_codec(c: Dict, hyper: Optional[Dict]) -> None:
    if c['codec_id'] not in _CODECS:
        _fail('codec.codec_id', f'must be one of {sorted(_CODECS)} (the learned bottlenecks '
              f'{", ".join(_CODECS.values())}), got {c["codec_id"]}')
    if (c['codec_id'] in _VARIABLE_RATE) != (c['rate_point'] is not None):
        _fail('codec.rate_point', 'must be an integer for a variable-rate codec and null '
              f'for a single-rate one, got {c["rate_point"]} with codec.codec_id '
              f'{c["codec_id"]}')
    # a hyperprior's factorized tables are z's
    n, of = (hyper['hyper_channels'], 'hyperprior.hyper_channels') if hyper else \
        (c['latent_channels'], 'codec.latent_channels')
    for name in ('medians', 'offsets', 'lengths', 'pmf_table'):
        if len(c[name]) != n:
            _fail(f'codec.{name}', f'has {len(c[name])} rows, {of} is {n}')
    _check_pmf_rows(c, 'codec')


def _check_pmf_rows(t: Dict, prefix: str) -> None:
    """Every table row holds its ``lengths`` entries, none of them zero."""
    if len(t['lengths']) != len(t['pmf_table']):
        _fail(f'{prefix}.lengths', f'has {len(t["lengths"])} rows, {prefix}.pmf_table '
              f'{len(t["pmf_table"])}')
    for i, (row, length) in enumerate(zip(t['pmf_table'], t['lengths'])):
        if len(row) < length:
            _fail(f'{prefix}.lengths[{i}]', f'is {length}; {prefix}.pmf_table[{i}] has only '
                  f'{len(row)} entries')
        if min(row[:length]) < 1:
            _fail(f'{prefix}.pmf_table[{i}]', f'has a zero frequency among its first '
                  f'{prefix}.lengths[{i}] = {length} entries (a symbol it could not code)')


def _check_hyperprior(h: Dict, latent_channels: int) -> None:
    """The hyper-synthesis' layers chain from z to (means and) log-scales, its integer sums
    stay below 2**53 (float64 exact in any order), the thresholds index the Gaussian tables."""
    syn, p = h['synthesis'], 'hyperprior.synthesis'
    layers, scale = syn['layers'], 2.0**syn['frac_bits']
    if h['hyper_downsample'] not in (2, 4):
        _fail('hyperprior.hyper_downsample', f'must be 2 or 4, got {h["hyper_downsample"]}')
    if 2**(len(layers) - 1) != h['hyper_downsample']:
        _fail(f'{p}.layers', f'has {len(layers)} convs; hyperprior.hyper_downsample '
              f'{h["hyper_downsample"]} needs {h["hyper_downsample"].bit_length()}')
    _check_integer_chain(layers, h['hyper_channels'],
                         latent_channels * (2 if syn['predict_means'] else 1), syn, p)
    if syn['mean_max'] * scale >= 2**24:
        _fail(f'{p}.mean_max', 'times 2**frac_bits must be < 2**24 (float32-exact means)')
    if not float(syn['act_max'] * scale).is_integer():
        _fail(f'{p}.act_max', 'times 2**frac_bits must be an integer (the activations are '
              'clamped to it and must stay integers)')
    g, thr = h['gaussian'], h['index_thresholds']
    if any(b < a for a, b in zip(thr, thr[1:])):
        _fail('hyperprior.index_thresholds', 'must be non-decreasing')
    if not len(g['offsets']) == len(g['lengths']) == len(thr) + 1:
        _fail('hyperprior.gaussian.offsets', f'{len(thr)} index thresholds need '
              f'{len(thr) + 1} tables, got {len(g["offsets"])} offsets, {len(g["lengths"])} '
              'lengths')
    _check_pmf_rows(g, 'hyperprior.gaussian')
    if 'channel_context' in h:
        _check_channel_context(h['channel_context'], latent_channels, syn)


def _check_integer_chain(layers: List[Dict], width: int, out: int, syn: Dict, p: str) -> None:
    """Integer conv layers from ``width`` input channels to ``out``: the widths chain, the
    weights fill them, and no integer sum can reach 2**53."""
    scale = 2.0**syn['frac_bits']
    for i, l in enumerate(layers):
        if l['in_channels'] != width:
            _fail(f'{p}.layers[{i}].in_channels', f'must be {width}, got {l["in_channels"]}')
        if (len(l['weight']), len(l['bias'])) != (l['out_channels'] * width * 9,
                                                  l['out_channels']):
            _fail(f'{p}.layers[{i}].weight', f'must hold out x in x 3 x 3 weights and out '
                  'biases')
        worst = 9 * width * syn['act_max'] * scale * max(map(abs, l['weight'])) + \
            max(map(abs, l['bias']))
        if worst >= 2**53:
            _fail(f'{p}.layers[{i}].weight', 'allows integer sums beyond 2**53 (float64 would '
                  'no longer be exact)')
        width = l['out_channels']
    if width != out:
        _fail(f'{p}.layers[{len(layers) - 1}].out_channels', f'is {width}, must be {out}')


def _check_channel_context(c: Dict, latent_channels: int, syn: Dict) -> None:
    """One transform per slice; slice i's reads the synthesis' 2C outputs and i slices."""
    p, n = 'hyperprior.channel_context', c['num_slices']
    if latent_channels % n:
        _fail(f'{p}.num_slices', f'{n} must divide codec.latent_channels ({latent_channels})')
    if len(c['transforms']) != n:
        _fail(f'{p}.transforms', f'has {len(c["transforms"])} transforms; {p}.num_slices is {n}')
    cs = latent_channels // n
    for i, t in enumerate(c['transforms']):
        _check_integer_chain(t['layers'], 2 * latent_channels + i * cs,
                             cs * (2 if syn['predict_means'] else 1), syn,
                             f'{p}.transforms[{i}]')


def _check_exit(e: Dict, class_names: Optional[List]) -> None:
    if e['cls_out_channels'] != e['num_classes']:
        _fail('exit.cls_out_channels', f'must equal exit.num_classes ({e["num_classes"]}) for a '
              f'sigmoid head, got {e["cls_out_channels"]}')
    a = e['anchors']
    if e['num_anchors'] != len(a['ratios']) * len(a['scales']):
        _fail('exit.num_anchors', f'is {e["num_anchors"]}; exit.anchors.ratios '
              f'({len(a["ratios"])}) x exit.anchors.scales ({len(a["scales"])}) give '
              f'{len(a["ratios"]) * len(a["scales"])}')
    if len(a['base_anchors']) != len(a['strides']):
        _fail('exit.anchors.base_anchors', f'has {len(a["base_anchors"])} levels, '
              f'exit.anchors.strides {len(a["strides"])}')
    for lv, (base, stride) in enumerate(zip(a['base_anchors'], a['strides'])):
        if len(base) != e['num_anchors']:
            _fail(f'exit.anchors.base_anchors[{lv}]', f'has {len(base)} anchors, '
                  f'exit.num_anchors is {e["num_anchors"]}')
        if any(s != int(s) for s in stride):
            _fail(f'exit.anchors.strides[{lv}]', f'must be whole numbers, got {stride}')
    c = e['bbox_coder']
    if not math.isclose(c['max_ratio'], abs(math.log(c['wh_ratio_clip'])), rel_tol=1e-9):
        _fail('exit.bbox_coder.max_ratio', f'must be |ln(exit.bbox_coder.wh_ratio_clip)| = '
              f'{abs(math.log(c["wh_ratio_clip"]))}, got {c["max_ratio"]}')
    if class_names is not None and len(class_names) != e['num_classes']:
        _fail('class_names', f'has {len(class_names)} names, exit.num_classes is '
              f'{e["num_classes"]}')


def _check_score_maps(maps: Optional[Dict]) -> None:
    for tier, m in (maps or {}).items():
        x, y = m['x'], m['y']
        if len(x) != len(y):
            _fail(f'score_maps.{tier}.y', f'has {len(y)} knots, score_maps.{tier}.x {len(x)}')
        if any(b <= a for a, b in zip(x, x[1:])):
            _fail(f'score_maps.{tier}.x', 'must be strictly increasing')
        if any(b < a for a, b in zip(y, y[1:])):
            _fail(f'score_maps.{tier}.y', 'must be non-decreasing (an isotonic map)')


def validate_sidecar(side) -> None:
    """Check every field of a sidecar (types, ranges, consistency between fields); raises
    :class:`SidecarError` naming the first bad field."""
    if not isinstance(side, dict):
        raise SidecarError(f'the sidecar must be a JSON object, got {_show(side)}')
    fields = dict(_TOP)
    if SIGNATURE_FIELD in side:
        fields[SIGNATURE_FIELD] = _HEX64
    if any(k in side for k in _DYNAMIC):  # a dynamic model: all four, exit and router set
        fields.update(_DYNAMIC)
    codec_id = side['codec'].get('codec_id') if isinstance(side.get('codec'), dict) else None
    if codec_id in _HYPERPRIOR:
        fields['hyperprior'] = _CONTEXT_SPEC if codec_id in _CHANNEL_CONTEXT else \
            _HYPERPRIOR_SPEC
    _check_fields(side, fields)
    _check_codec(side['codec'], side.get('hyperprior'))
    if 'hyperprior' in side:
        _check_hyperprior(side['hyperprior'], side['codec']['latent_channels'])
    if math.prod(side['feature_strides']) > 256:
        _fail('feature_strides', f'multiply to {math.prod(side["feature_strides"])} (> 256)')
    if 'exit' in side:
        _check_exit(side['exit'], side['class_names'])
        _check_score_maps(side['score_maps'])


# ------------------------------------------------------------------ graph consistency
def expected_outputs(side: Dict) -> List[str]:
    """The graph outputs the sidecar describes: the latent (+ a hyperprior's z, + a dynamic
    model's exit maps)."""
    latents = ['latent', 'hyper_latent'] if 'hyperprior' in side else ['latent']
    if 'exit' not in side:
        return latents
    n_lv = len(side['exit']['anchors']['strides'])
    parts = ['cls', 'bbox'] + (['ctr'] if side['exit']['score_factors'] else [])
    stats = ['feature_stats'] if side['router']['kind'] in _STATS_ROUTERS else []
    return latents + [f'{p}_{i}' for p in parts for i in range(n_lv)] + stats


def _channels(shape) -> Optional[int]:
    return shape[1] if len(shape) == 4 and isinstance(shape[1], int) else None


def check_graph_io(side: Dict, inputs: Sequence[Tuple[str, list]],
                   outputs: Sequence[Tuple[str, list]]) -> None:
    """Names and static channel counts of the graph's ``inputs``/``outputs`` ((name, shape)
    pairs, as ONNX Runtime lists them) against the sidecar."""
    if [n for n, _ in inputs] != ['input'] or _channels(inputs[0][1]) not in (3, None):
        raise EdgeRuntimeError(f'the graph takes {inputs}, not one (N, 3, H, W) "input": not '
                               'an edge graph of tools/export_edge_onnx.py')
    got, want = [n for n, _ in outputs], expected_outputs(side)
    if got != want:
        _fail(_output_field(side, got), f'the graph outputs {got}, the sidecar describes {want}')
    shapes = dict(outputs)
    c = _channels(shapes['latent'])
    if c is not None and c != side['codec']['latent_channels']:
        _fail('codec.latent_channels', f'is {side["codec"]["latent_channels"]}, the graph\'s '
              f'latent has {c} channels')
    c = _channels(shapes.get('hyper_latent', ()))
    if c is not None and c != side['hyperprior']['hyper_channels']:
        _fail('hyperprior.hyper_channels', f'is {side["hyperprior"]["hyper_channels"]}, the '
              f'graph\'s hyper_latent has {c} channels')
    if 'feature_stats' in want:
        n = shapes['feature_stats'][-1]
        if isinstance(n, int) and n != len(side['router']['stats_mean']):
            _fail('router.stats_mean', f'has {len(side["router"]["stats_mean"])} entries, the '
                  f'graph\'s feature_stats {n}')
    for name in want[1 + ('hyperprior' in side):]:
        if name == 'feature_stats':
            continue
        e, part = side['exit'], name.split('_')[0]
        c = _channels(shapes[name])
        per_anchor = dict(cls=e['cls_out_channels'], bbox=4, ctr=1)[part]
        if c is not None and c != e['num_anchors'] * per_anchor:
            _fail('exit.num_anchors', f'{e["num_anchors"]} x {per_anchor} '
                  + ('(exit.cls_out_channels) ' if part == 'cls' else '')
                  + f'!= the {c} channels of the graph\'s {name}')


def _output_field(side: Dict, got: List[str]) -> str:
    """The field to blame for graph outputs other than the sidecar describes."""
    if ('hyper_latent' in got) != ('hyperprior' in side):
        return 'hyperprior'
    if 'exit' not in side:
        return 'exit'
    if any(n.startswith('ctr_') for n in got) != side['exit']['score_factors']:
        return 'exit.score_factors'
    if ('feature_stats' in got) != (side['router']['kind'] in _STATS_ROUTERS):
        return 'router.kind'
    return 'exit.anchors.strides'


def probe_side(side: Dict) -> int:
    """Side of a square probe input that every stride divides (so each output's size is
    exact): the least common multiple of the padding divisor, the latent's and the exit
    levels' strides, at least 64."""
    steps = [side['preprocess']['pad_size_divisor'],
             math.prod(side['feature_strides']) * side['codec']['downsample'] *
             side.get('hyperprior', {}).get('hyper_downsample', 1)]
    steps += [int(s) for st in side.get('exit', {}).get('anchors', {}).get('strides', [])
              for s in st]
    unit = math.lcm(*steps)
    if unit > 2048:
        _fail('feature_strides', f'with codec.downsample, preprocess.pad_size_divisor and the '
              f'exit strides, no input below 2048 px fits them all (lcm {unit})')
    return unit * -(-64 // unit)


def check_probe(side: Dict, size: int, shapes: Dict[str, tuple]) -> None:
    """Output shapes of one ``size`` x ``size`` probe run against the strides."""
    feat = size // math.prod(side['feature_strides'])
    lat = feat // side['codec']['downsample']
    if tuple(shapes['latent'][-2:]) != (lat, lat):
        _fail('feature_strides', f'{side["feature_strides"]} with codec.downsample '
              f'{side["codec"]["downsample"]} give a {lat}x{lat} latent for a {size}x{size} '
              f'input; the graph gives {tuple(shapes["latent"][-2:])}')
    if 'hyperprior' in side:
        d = side['hyperprior']['hyper_downsample']
        if tuple(shapes['hyper_latent'][-2:]) != (lat // d, lat // d):
            _fail('hyperprior.hyper_downsample', f'{d} gives a {lat // d}x{lat // d} z for a '
                  f'{lat}x{lat} latent; the graph gives {tuple(shapes["hyper_latent"][-2:])}')
    for lv, (sx, sy) in enumerate(side.get('exit', {}).get('anchors', {}).get('strides', [])):
        want, got = (size // int(sy), size // int(sx)), tuple(shapes[f'cls_{lv}'][-2:])
        if got != want:
            _fail(f'exit.anchors.strides[{lv}]', f'give a {want} map for a {size}x{size} input; '
                  f'the graph\'s cls_{lv} is {got}')


# ------------------------------------------------------------------ checksum and signature
def _canonical(side: Dict, without: Tuple[str, ...]) -> bytes:
    body = {k: v for k, v in side.items() if k not in without}
    return json.dumps(body, sort_keys=True, separators=(',', ':')).encode()


def sidecar_digest(sidecar: Dict) -> str:
    """SHA-256 of the sidecar's canonical JSON without its own digest field (the exporter
    writes it, the runtime checks it)."""
    return hashlib.sha256(_canonical(sidecar, (DIGEST_FIELD, ))).hexdigest()


def _hmac(side: Dict, key: bytes) -> str:
    return hmac.new(key, _canonical(side, (DIGEST_FIELD, SIGNATURE_FIELD)),
                    hashlib.sha256).hexdigest()


def sign_sidecar(side: Dict, key: bytes) -> Dict:
    """A copy of ``side`` with its HMAC-SHA256 under ``key`` and the checksum over both."""
    out = {k: v for k, v in side.items() if k not in (DIGEST_FIELD, SIGNATURE_FIELD)}
    out[SIGNATURE_FIELD] = _hmac(out, key)
    out[DIGEST_FIELD] = sidecar_digest(out)
    return out


def _verify(side: Dict, key: bytes) -> None:
    sig = side.get(SIGNATURE_FIELD)
    if sig is None:
        _fail(SIGNATURE_FIELD, 'missing: this edge runs only sidecars signed with its key '
              '(export with tools/export_edge_onnx.py --sidecar-key-file)')
    if not isinstance(sig, str) or not hmac.compare_digest(sig, _hmac(side, key)):
        _fail(SIGNATURE_FIELD, 'does not match: the sidecar was signed with another key or '
              'edited after signing; export it again with this edge\'s key')


def read_key_file(path: str) -> bytes:
    """The signing key in ``path`` (its bytes, surrounding whitespace removed)."""
    try:
        with open(path, 'rb') as f:
            key = f.read().strip()
    except OSError as e:
        raise EdgeRuntimeError(f'sidecar key file {path}: {e.strerror}') from None
    if len(key) < MIN_KEY_BYTES:
        raise EdgeRuntimeError(
            f'sidecar key file {path}: {len(key)} bytes; use at least {MIN_KEY_BYTES} random '
            'bytes, e.g. `openssl rand -hex 32 > KEYFILE`')
    return key


def load_sidecar(path: str, key: Optional[bytes] = None) -> Dict:
    """Read a sidecar and check it: format, version, checksum, signature (when ``key`` is
    given: required), then every field (:func:`validate_sidecar`)."""
    try:
        with open(path) as f:
            side = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise EdgeRuntimeError(f'sidecar {path}: not readable JSON ({e})') from None
    if not isinstance(side, dict) or side.get('format') != SIDECAR_FORMAT:
        raise SidecarError(f'format: {path} is not an ecc_edge sidecar '
                           '(tools/export_edge_onnx.py writes one beside edge.onnx)')
    if side.get('version') != SIDECAR_VERSION:
        _fail('version', f'{_show(side.get("version"))}; this runtime reads {SIDECAR_VERSION}: '
              'export the edge again')
    if side.get(DIGEST_FIELD) != sidecar_digest(side):
        _fail(DIGEST_FIELD, f'sidecar {path} is corrupted or was edited (its checksum does not '
              'match its content): export the edge again')
    if key is not None:
        _verify(side, key)
    validate_sidecar(side)
    return side
