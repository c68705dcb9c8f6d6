"""Wrong files for the fault benchmark (``tools/benchmark_faults.py``): forged sidecars and
checkpoints of another model.

* :func:`sidecar_fuzz`: seeded edits of a light-edge sidecar (``edge.json``) with its checksum
  recomputed (an attacker or a careless edit, not a corrupted copy). Each edited sidecar is
  given to :class:`ecc_edge.runtime.LightEdge`, which runs two seeded images; the edit is then
  *refused* (``EdgeRuntimeError``, counted as naming the field when the message names the edited
  field, or the signature on an edge holding the key), ran with outputs *identical* to the
  unedited sidecar's, ran with
  *changed* outputs (a value inside the schema: only a signature tells it from an export), or
  raised anything else (a *traceback*: the target is 0). With ``key``, the edge holds the
  operator's key and the forger does not: every non-harmless edit must be refused.
* :func:`checkpoint_refusals`: checkpoints that do not fit a split config (its unsplit
  detector's, another detector's, a reshaped one, a truncated and a non-checkpoint file) run
  through ``tools/test.py``, ``tools/train.py --resume``, ``tools/serve_cloud.py`` and
  ``tools/edge_client.py`` as subprocesses: each must exit non-zero with one ``error:`` line and
  no traceback.
"""
import copy
import json
import math
import os
import os.path as osp
import random
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from ecc_edge.sidecar import SIGNATURE_FIELD, EdgeRuntimeError, sidecar_digest

from . import REPO

__all__ = ['checkpoint_refusals', 'sidecar_fuzz']

Path = Tuple  # keys and list indices from the sidecar's root


def _name(path: Path) -> str:
    out = ''
    for p in path:
        out += f'[{p}]' if isinstance(p, int) else (f'.{p}' if out else str(p))
    return out


def _nodes(node, path: Path = ()) -> List[Path]:
    """Every value's path (containers too), the root excluded."""
    out = [path] if path else []
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out += _nodes(v, path + (k, ))
    return out


def _get(side, path: Path):
    for p in path:
        side = side[p]
    return side


def _pick_path(side: Dict, rng: random.Random) -> Path:
    """A field chosen uniformly among the field *names* (``codec.pmf_table[][]`` is one), then
    one of its instances: the long tables do not drown the other fields."""
    groups: Dict[str, List[Path]] = {}
    for path in _nodes(side):
        if path[-1] in ('sidecar_sha256', SIGNATURE_FIELD):
            continue  # recomputed / stripped by the forger anyway
        groups.setdefault(''.join('[]' if isinstance(p, int) else f'.{p}' for p in path),
                          []).append(path)
    return rng.choice(groups[rng.choice(sorted(groups))])


_OTHER_TYPES = ['x', '', [], {}, None, True, False, 1.5, 7, -1, [1, 2, 3], {'a': 1}]


def _value_edits(v) -> list:
    """Replacements for a leaf value: other types, extremes, nearby values."""
    out = list(_OTHER_TYPES)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out += [0, -v, v + 1, v - 1, v * 2, v * 0.5, v * 1e6, -1e30, 1e30, 2**63, 2**31,
                math.nan, math.inf, -math.inf, float(v) if isinstance(v, int) else int(v)]
    if isinstance(v, str):
        hexa = v.strip('0123456789abcdef') == ''
        out += ['X' * 300, v.upper(), v + '0', v[:-1]]
        if hexa and v:
            out.append(('f' if v[0] != 'f' else '0') + v[1:])
    if isinstance(v, bool):
        out.append(not v)
    return out


def _edit(side: Dict, rng: random.Random) -> Tuple[str, str, str]:
    """Apply one random edit in place -> (kind, edited field's name, new value as JSON)."""
    path = _pick_path(side, rng)
    parent, key = _get(side, path[:-1]), path[-1]
    value = parent[key]
    kind = rng.choice(['value', 'value', 'value', 'delete', 'add', 'reorder'])
    in_list = isinstance(parent, list)
    if kind == 'delete':
        del parent[key]
    elif kind == 'add' and not in_list:
        parent[key + '_x'] = copy.deepcopy(value)
        return kind, _name(path[:-1] + (key + '_x', )), 'an unknown field'
    elif kind == 'add':
        parent.append(copy.deepcopy(value))
    elif kind == 'reorder' and not in_list:  # harmless: JSON key order
        items = list(parent.items())
        rng.shuffle(items)
        parent.clear()
        parent.update(items)
    else:
        parent[key] = rng.choice(_value_edits(value))
        return 'value', _name(path), json.dumps(parent[key])[:60]
    # a list lost or gained an item: the list is the edited field
    return kind, _name(path[:-1] if in_list else path), ''


def _forged(side: Dict, key: Optional[bytes]) -> Dict:
    """The forger's finish: the checksum recomputed. Without signing, no signature; with it,
    the stale one stays (the forger lacks the key)."""
    out = dict(side)
    out.pop('sidecar_sha256', None)
    if key is None:
        out.pop(SIGNATURE_FIELD, None)
    out['sidecar_sha256'] = sidecar_digest(out)
    return out


def _images() -> List[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((96, 128), (64, 64))]


def _outputs(edge, images) -> list:
    """What the edge hands on for each image (bytes, tier, detections, router score)."""
    out = []
    for img in images:
        r = edge.process(img)
        dets = None if r.detections is None else [a.tolist() for a in r.detections]
        out.append((r.payload, r.tier, dets, r.router_score))
    return out


def _names_field(message: str, field: str, signed: bool) -> bool:
    """The message names the edited field (with or without its list indices), or, on an
    edge holding the key, the signature."""
    return field in message or field.split('[')[0] in message or \
        (signed and message.startswith(SIGNATURE_FIELD))


def _try_edit(graph, path, base, images, key) -> Tuple[str, str]:
    from ecc_edge.runtime import LightEdge
    try:
        edge = LightEdge(graph, path, key=key)
        return ('identical' if _outputs(edge, images) == base else 'changed'), ''
    except EdgeRuntimeError as e:
        return 'refused', str(e)
    except Exception as e:  # noqa: BLE001 -- what the benchmark counts
        return 'traceback', f'{type(e).__name__}: {e}'


def sidecar_fuzz(export_dir: str, n_edits: int = 200, seed: int = 0,
                 key: Optional[bytes] = None) -> dict:
    """Edit ``export_dir``'s edge.json ``n_edits`` times (seeded; checksum recomputed) and run
    each on the light edge -> counts and examples (see the module docstring)."""
    from ecc_edge.runtime import LightEdge
    graph, original = osp.join(export_dir, 'edge.onnx'), osp.join(export_dir, 'edge.json')
    side = json.load(open(original))
    images = _images()
    base = _outputs(LightEdge(graph, original, key=key), images)
    rng = random.Random(seed)
    fd, tmp = tempfile.mkstemp(suffix='.json')
    os.close(fd)
    counts = dict(refused=0, refused_naming_field=0, identical=0, changed=0, tracebacks=0)
    examples: Dict[str, list] = dict(traceback=[], refused_unnamed=[], changed=[])
    by_kind: Dict[str, Dict[str, int]] = {}
    t0 = time.perf_counter()
    try:
        for _ in range(n_edits):
            edited = copy.deepcopy(side)
            kind, field, value = _edit(edited, rng)
            with open(tmp, 'w') as f:
                json.dump(_forged(edited, key), f)
            outcome, msg = _try_edit(graph, tmp, base, images, key)
            counts['tracebacks' if outcome == 'traceback' else outcome] += 1
            by_kind.setdefault(kind, {}).setdefault(outcome, 0)
            by_kind[kind][outcome] += 1
            named = outcome == 'refused' and _names_field(msg, field, key is not None)
            counts['refused_naming_field'] += int(named)
            bucket = {'traceback': 'traceback', 'changed': 'changed'}.get(
                outcome, 'refused_unnamed' if outcome == 'refused' and not named else None)
            if bucket and len(examples[bucket]) < 10:
                examples[bucket].append(dict(kind=kind, field=field, value=value,
                                             message=msg[:300]))
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return dict(edits=n_edits, seed=seed, signed=key is not None, **counts,
                by_kind=by_kind, examples=examples,
                seconds=round(time.perf_counter() - t0, 2))


# ---------------------------------------------------------------- wrong checkpoints
def _wrong_checkpoints(config: str, checkpoint: str, workdir: str) -> Dict[str, str]:
    """Files that must not load into ``config``'s model -> {case: path}."""
    import cv2
    import torch
    from mmengine.config import Config
    from mmengine.runner import save_checkpoint

    from ecc_mmdet.apis import SPLIT_PARTS, build_detector, load_config, unsplit_model_cfg
    cfg = load_config(config)
    state = torch.load(checkpoint, map_location='cpu')['state_dict']
    unsplit = {k: v for k, v in state.items() if k.split('.', 1)[0] not in SPLIT_PARTS}
    other_path = osp.join(REPO, 'configs', 'ecc_retinanet_r18_synthetic.py' if 'roi_head' in
                          cfg.model else 'ecc_faster_rcnn_r18_synthetic.py')
    other = load_config(other_path)
    name = next(k for k, v in state.items() if k.startswith('backbone.') and v.ndim == 4)
    reshaped = dict(state, **{name: torch.zeros(state[name].shape[0] + 1,
                                                *state[name].shape[1:])})
    files = {}
    for case, sd, meta in (
            ('unsplit', unsplit, dict(cfg=Config(dict(
                model=unsplit_model_cfg(cfg.model))).pretty_text)),
            ('other_detector', build_detector(other.model).state_dict(),
             dict(cfg=other.pretty_text, experiment_name=osp.basename(other_path)[:-3])),
            ('reshaped', reshaped, {})):
        files[case] = osp.join(workdir, f'{case}.pth')
        save_checkpoint({'state_dict': sd, 'meta': meta}, files[case])
    os.makedirs(osp.join(workdir, 'images'), exist_ok=True)  # the client's --source
    cv2.imwrite(osp.join(workdir, 'images', '0.png'), _images()[0])
    data = open(checkpoint, 'rb').read()
    files['truncated'] = osp.join(workdir, 'truncated.pth')
    open(files['truncated'], 'wb').write(data[:len(data) // 2])
    files['not_a_checkpoint'] = osp.join(workdir, 'not_a_checkpoint.pth')
    open(files['not_a_checkpoint'], 'wb').write(b'this is no checkpoint\n' * 10)
    return files


def _tool_commands(config: str, ckpt: str, workdir: str) -> Dict[str, List[str]]:
    tools = osp.join(REPO, 'tools')
    return dict(
        test=[osp.join(tools, 'test.py'), config, ckpt, '--work-dir', osp.join(workdir, 't')],
        train_resume=[osp.join(tools, 'train.py'), config, '--resume', ckpt, '--work-dir',
                      osp.join(workdir, 'r')],
        serve=[osp.join(tools, 'serve_cloud.py'), config, ckpt, '--port', '0',
               '--insecure-no-auth'],
        client=[osp.join(tools, 'edge_client.py'), config, ckpt, '--server',
                'http://127.0.0.1:9', '--source', osp.join(workdir, 'images'),
                '--insecure-no-auth'])


def _run_refusal(cmd: List[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=REPO)
        code, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired as e:  # accepted: a server serving, a client sending
        code, err = None, (e.stderr or b'').decode(errors='replace')
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    return dict(returncode=code, seconds=round(time.perf_counter() - t0, 2),
                error_lines=len(lines), message=lines[0][:400] if lines else err[-400:],
                traceback='Traceback (most recent call last)' in err,
                refused=code not in (0, None) and len(lines) == 1
                and 'Traceback (most recent call last)' not in err)


def checkpoint_refusals(config: str, checkpoint: str, workdir: str,
                        timeout: float = 120.0) -> dict:
    """Every wrong checkpoint for ``config`` (its unsplit detector's, another detector's, a
    reshaped, a truncated and a non-checkpoint file, made from ``checkpoint``) through test,
    train --resume, serve and client as subprocesses -> {case: {tool: result}} and ``all_refused``
    (non-zero exit, exactly one ``error:`` line, no traceback, every time)."""
    os.makedirs(workdir, exist_ok=True)
    cases = {}
    for case, path in _wrong_checkpoints(config, checkpoint, workdir).items():
        cases[case] = {tool: _run_refusal(cmd, timeout)
                       for tool, cmd in _tool_commands(config, path, workdir).items()}
    return dict(cases=cases, all_refused=all(r['refused'] for c in cases.values()
                                              for r in c.values()))
