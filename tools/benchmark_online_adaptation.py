"""Online adaptation under distribution shift: every method on the same corrupted streams.

    python tools/benchmark_online_adaptation.py CONFIG CHECKPOINT \
        [--corruptions gaussian_noise shot_noise defocus_blur motion_blur fog contrast] \
        [--severities 3 5] [--methods none norm_stats tent cema upload_all random] \
        [--num-images 200] [--seeds 0 1] [--continual] [--data-root DIR] \
        [--cfg-options test_cfg.cloud.steps=4 ...] [--through-server] \
        [--teacher LABEL TEACHER_CONFIG TEACHER_CHECKPOINT ...] \
        [--out work_dirs/benchmarks/online.json]

CONFIG selects ``OnlineAdaptationLoop`` (e.g. configs/ecc_faster_rcnn_r18_synthetic_cema.py);
its settings are CEMA's, the tool only changes ``method`` (and ``random_ratio``: the random
control uploads at CEMA's measured ratio on the same stream). Per stream (corruption, severity,
order seed) and method: online mAP of the edge exit and of the whole dynamic system, upload
ratio, uplink (adaptation images + inference payloads) and downlink bytes per image, and the
router's offload ratio in the first and last quarter of the stream. A clean stream without
adaptation is the reference of "mAP lost to the shift". ``--continual`` adds CEMA and no
adaptation over the severity-3 streams one after another without reset. ``--teacher LABEL CONFIG
CHECKPOINT`` (repeatable) runs the methods that use a teacher (cema, upload_all, random) once
more with that cloud teacher, as the rows ``cema@LABEL`` etc., on the same streams.

``--through-server`` runs the cloud side of every stream through a real server: it starts
``tools/serve_cloud.py --adapt`` on 127.0.0.1 (a free port, a fresh token file in a temporary
directory, the same config, checkpoint, ``--cfg-options``, data root and thread count), the loop
uploads and gets its PARAM_UPDATEs over HTTP (``test_cfg.remote``), and the server is stopped at
the end. The results are the in-process ones (only the ``seconds`` differ).

Writes JSON, a table and a plot; checks the issue's targets on the averages over corruptions.
"""
import argparse
import contextlib
import copy
import os
import os.path as osp
import statistics
import tempfile

import ecc_tools  # noqa: F401  (imports ecc_mmdet: registers our components)
from ecc_tools.cli import write_report

DEFAULT_CORRUPTIONS = ('gaussian_noise', 'shot_noise', 'defocus_blur', 'motion_blur', 'fog',
                       'contrast')
METHOD_ORDER = ('none', 'norm_stats', 'tent', 'cema', 'upload_all', 'random')
#: the methods whose cloud labels uploads with a teacher (``--teacher`` runs them again)
TEACHER_METHODS = ('cema', 'upload_all', 'random')
FIELDS = ('edge_mAP', 'system_mAP', 'upload_ratio', 'uplink_adapt_bytes_per_image',
          'uplink_infer_bytes_per_image', 'downlink_bytes_per_image', 'downlink_per_update_ratio',
          'offload_ratio', 'offload_ratio_first_quarter', 'offload_ratio_last_quarter',
          'teacher_mAP_on_uploads', 'edge_mAP_on_uploads')


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', nargs='?')
    p.add_argument('checkpoint', nargs='?')
    p.add_argument('--corruptions', nargs='+', default=list(DEFAULT_CORRUPTIONS))
    p.add_argument('--severities', type=int, nargs='+', default=[3, 5])
    p.add_argument('--methods', nargs='+', default=list(METHOD_ORDER))
    p.add_argument('--num-images', type=int, default=200)
    p.add_argument('--seeds', type=int, nargs='+', default=[0],
                   help='stream-order seeds (the spread over them is reported)')
    p.add_argument('--continual', action='store_true')
    p.add_argument('--data-root')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--through-server', action='store_true',
                   help='adapt through tools/serve_cloud.py --adapt on 127.0.0.1 (started and '
                   'stopped here) instead of in this process')
    p.add_argument('--teacher', nargs=3, action='append', default=[],
                   metavar=('LABEL', 'CONFIG', 'CHECKPOINT'),
                   help='another cloud teacher: the methods that use one (cema, upload_all, '
                   'random) run again with it, as rows METHOD@LABEL')
    p.add_argument('--out', default='work_dirs/benchmarks/online_adaptation.json')
    p.add_argument('--from-json', nargs='+',
                   help='re-render the summary, table and plot of saved runs (their JSON; several '
                   'runs, e.g. other seeds, are merged) without running anything; to --out')
    args = p.parse_args(argv)
    # the --cfg-options as given, for the server's command line
    raw = argparse.ArgumentParser(add_help=False)
    raw.add_argument('--cfg-options', nargs='+', default=[])
    args.cfg_option_strings = raw.parse_known_args(argv)[0].cfg_options
    return args


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _paired(rows, a, b, severity, corruptions, seeds):
    """Edge-mAP differences a - b on the same streams (corruption x seed)."""
    out = []
    for c in corruptions:
        for seed in seeds:
            va = [r['edge_mAP'] for r in rows if r['mode'] == 'reset' and r['method'] == a
                  and r['severity'] == severity and r['corruption'] == c and r['seed'] == seed]
            vb = [r['edge_mAP'] for r in rows if r['mode'] == 'reset' and r['method'] == b
                  and r['severity'] == severity and r['corruption'] == c and r['seed'] == seed]
            if va and vb:
                out.append(va[0] - vb[0])
    return out


def _spread(diffs):
    """Mean, sd, range and the 95 % t-interval of the mean of paired per-stream differences
    (the streams, corruption x order seed, are the units: each is one online run)."""
    from scipy.stats import t
    mean, sd = _mean(diffs), statistics.stdev(diffs)
    half = float(t.ppf(0.975, len(diffs) - 1)) * sd / len(diffs) ** 0.5
    return dict(mean=mean, sd=sd, min=min(diffs), max=max(diffs), n=len(diffs),
                ci95=[float(mean - half), float(mean + half)])


def _variant(base: str, label) -> str:
    """A method's row name with another teacher (``cema@robust``)."""
    return base if label is None else f'{base}@{label}'


def target_ratio(loop) -> float:
    """The upload ratio CEMA's selector holds (its band's width with the budget on), or None."""
    sel = dict(loop.get('selector') or {})
    band, budget = sel.get('band'), sel.get('budget', True)
    if sel.get('type', 'EntropySelector') != 'EntropySelector' or band is None or budget in (
            None, False):
        return None
    return float(band[1]) - float(band[0])


def _labels(methods):
    """The teacher labels among row names: None (the config's teacher) first."""
    out = [None] + sorted({m.split('@', 1)[1] for m in methods if '@' in m})
    return out


def method_order(methods):
    """Row names in table order: METHOD_ORDER, each teacher method followed by its variants."""
    present = set(methods)
    return [_variant(m, lab) for m in METHOD_ORDER for lab in _labels(present)
            if _variant(m, lab) in present]


def _by_severity(rows, methods, severities, corruptions, seeds) -> dict:
    """severity -> method -> the FIELDS averaged over corruptions per seed, then over seeds."""
    out = {}
    for s in severities:
        out[str(s)] = {}
        for m in methods:
            per_seed = []
            for seed in seeds:
                cells = [r for r in rows if r['mode'] == 'reset' and r['method'] == m
                         and r['severity'] == s and r['seed'] == seed]
                if len(cells) == len(corruptions):
                    per_seed.append({k: _mean([c.get(k) for c in cells]) for k in FIELDS})
            if not per_seed:
                continue
            agg = {k: _mean([p[k] for p in per_seed]) for k in FIELDS}
            agg['edge_mAP_range'] = [min(p['edge_mAP'] for p in per_seed),
                                     max(p['edge_mAP'] for p in per_seed)]
            out[str(s)][m] = agg
    return out


def _add_gains(out, rows, clean_map, corruptions, seeds) -> None:
    """Per cell: the share of the mAP lost to the shift that the method recovers, and its
    paired mAP change against no adaptation."""
    for s, per in out.items():
        base = per.get('none')
        for m, agg in per.items():
            if base is not None and clean_map is not None and clean_map > base['edge_mAP']:
                agg['recovery'] = (agg['edge_mAP'] - base['edge_mAP']) / (clean_map -
                                                                           base['edge_mAP'])
            # paired over corruptions (same streams): mean and spread of the mAP change
            diffs = _paired(rows, m, 'none', int(s), corruptions, seeds)
            if len(diffs) > 1:
                agg['edge_gain_vs_none'] = _spread(diffs)


def _budget_target(rows, cema, target_ratio) -> dict:
    """Every stream's upload ratio within 5 points of the selector's target."""
    ups = {f"{r['stream']} seed {r['seed']}": r['upload_ratio'] for r in rows
           if r['mode'] == 'reset' and r['method'] == cema}
    worst = max(ups, key=lambda k: abs(ups[k] - target_ratio))
    return dict(target=target_ratio, worst_stream=worst, worst_ratio=ups[worst],
                met=abs(ups[worst] - target_ratio) <= 0.05)


def _cema_targets(out, rows, clean_off, corruptions, seeds, label=None,
                  target_ratio=None) -> dict:
    """The targets on CEMA (with the teacher ``label``) at severity 3 and 5 (``out``: severity
    -> method -> averages); keys carry ``@label`` for another teacher."""
    cema_name, s3 = _variant('cema', label), out.get('3', {})
    cema, key = s3[cema_name], (lambda k: k if label is None else f'{k}@{label}')
    targets = {key('recovery_ge_50pct_at_s3'): dict(
        value=cema.get('recovery'), upload_ratio=cema['upload_ratio'],
        met=bool(cema.get('recovery') is not None and cema['recovery'] >= 0.5
                 and cema['upload_ratio'] <= 0.3))}
    others = {m: s3[m]['edge_mAP'] for m in (_variant('random', label), 'norm_stats', 'tent')
              if m in s3}
    # paired over the same streams: CEMA minus each, mean and sd over corruptions x seeds
    paired = {m: _spread(d) for m in others
              if len(d := _paired(rows, cema_name, m, 3, corruptions, seeds)) > 1}
    targets[key('beats_random_and_edge_only_at_s3')] = dict(
        cema=cema['edge_mAP'], others=others,
        cema_minus=({m: f"{v['mean']:+.2f} +- {v['sd']:.2f}" for m, v in paired.items()}),
        met=bool(others) and all(cema['edge_mAP'] > v for v in others.values()),
        beyond_noise=bool(paired) and all(v['mean'] > v['sd'] for v in paired.values()))
    for sev in out:  # CEMA - BN statistics: the paired 95 % interval above 0
        d = _paired(rows, cema_name, 'norm_stats', int(sev), corruptions, seeds)
        if len(d) > 1:
            sp = _spread(d)
            targets[key(f'minus_norm_stats_ci_above_0_at_s{sev}')] = dict(
                mean=sp['mean'], ci95=f"[{sp['ci95'][0]:+.2f}, {sp['ci95'][1]:+.2f}]",
                streams=sp['n'], met=sp['ci95'][0] > 0)
    if 'none' in s3 and clean_off is not None:
        before = abs(s3['none']['offload_ratio_last_quarter'] - clean_off)
        after = abs(cema['offload_ratio_last_quarter'] - clean_off)
        targets[key('offload_ratio_back_toward_clean_at_s3')] = dict(
            clean=clean_off, none_last_quarter=s3['none']['offload_ratio_last_quarter'],
            cema_last_quarter=cema['offload_ratio_last_quarter'], met=after < before)
    if target_ratio is not None:
        targets[key('upload_ratio_within_5pts_every_stream')] = _budget_target(
            rows, cema_name, target_ratio)
    return targets


def summarize(rows, clean, methods, severities, corruptions, target_ratio=None):
    """Averages over corruptions (per seed, then mean and range over seeds) and the targets;
    ``target_ratio``: the CEMA selector's upload budget."""
    seeds = sorted({r['seed'] for r in rows if r['mode'] == 'reset'})
    out = _by_severity(rows, methods, severities, corruptions, seeds)
    clean_map = _mean([c['edge_mAP'] for c in clean])
    clean_off = _mean([c['offload_ratio'] for c in clean])
    clean_sys = _mean([c['system_mAP'] for c in clean])
    _add_gains(out, rows, clean_map, corruptions, seeds)
    targets = {}
    for label in _labels(methods):
        if _variant('cema', label) in out.get('3', {}):
            targets.update(_cema_targets(out, rows, clean_off, corruptions, seeds, label,
                                         target_ratio))
    ratios = [r['downlink_per_update_ratio'] for r in rows if r['num_updates']]
    if ratios:
        targets['downlink_per_update_le_1pct'] = dict(value=max(ratios), met=max(ratios) <= 0.01)
    return dict(clean_edge_mAP=clean_map, clean_system_mAP=clean_sys,
                clean_offload_ratio=clean_off, by_severity=out, targets=targets)


def _f(v, spec, width):
    return f'{"-":>{width}}' if v is None else f'{v:{width}{spec}}'


def table(res) -> str:
    s = res['summary']
    lines = [f"clean stream, no adaptation: edge mAP {s['clean_edge_mAP']:.1f}, system mAP "
             f"{s['clean_system_mAP']:.1f}, offload ratio {s['clean_offload_ratio']:.2f} "
             f"({res['num_images']} images, seeds {res['seeds']})", '']
    w = max([12] + [len(r['method']) + 2 for r in res['rows']])  # the method column
    head = (f"{'stream':<24}{'method':<{w}}{'edge':>6}{'sys':>6}{'upl%':>6}{'upKB':>7}"
            f"{'infKB':>7}{'downB':>7}{'off q1':>7}{'off q4':>7}")
    lines.append(head)
    for r in res['rows']:
        lines.append(
            f"{r['stream'] + ('' if r['mode'] == 'reset' else ' cont'):<24}"
            f"{r['method']:<{w}}{r['edge_mAP']:6.1f}{r['system_mAP']:6.1f}"
            f"{100 * r['upload_ratio']:6.1f}{r['uplink_adapt_bytes_per_image'] / 1000:7.2f}"
            f"{r['uplink_infer_bytes_per_image'] / 1000:7.2f}"
            f"{r['downlink_bytes_per_image']:7.0f}{r['offload_ratio_first_quarter']:7.2f}"
            f"{r['offload_ratio_last_quarter']:7.2f}" + (f"  seed {r['seed']}"
                                                         if len(res['seeds']) > 1 else ''))
    lines += ['', 'averages over corruptions (edge mAP range over seeds; gain = paired change '
              'of edge mAP vs no adaptation over corruptions x seeds, mean +- sd; tchr@up / '
              'edge@up = mAP of the teacher\'s pseudo labels / of the edge on the uploaded '
              'images)']
    lines.append(f"{'sev':<5}{'method':<{w}}{'edge':>6}{'range':>13}{'sys':>6}{'recov':>7}"
                 f"{'gain':>14}{'upl%':>6}{'upKB':>7}{'downB':>7}{'off q4':>7}{'tchr@up':>8}"
                 f"{'edge@up':>8}")
    for sev, per in s['by_severity'].items():
        for m, a in per.items():
            g = a.get('edge_gain_vs_none')
            gain = f"{g['mean']:+6.1f}+-{g['sd']:4.1f}" if g else f"{'-':>13}"
            rng = f"[{a['edge_mAP_range'][0]:.1f},{a['edge_mAP_range'][1]:.1f}]"
            rec = None if a.get('recovery') is None else 100 * a['recovery']
            lines.append(f"{sev:<5}{m:<{w}}{a['edge_mAP']:6.1f}{rng:>13}{a['system_mAP']:6.1f}"
                         f"{_f(rec, '.0f', 6)}%"
                         f"{gain:>14}{100 * a['upload_ratio']:6.1f}"
                         f"{a['uplink_adapt_bytes_per_image'] / 1000:7.2f}"
                         f"{a['downlink_bytes_per_image']:7.0f}"
                         f"{a['offload_ratio_last_quarter']:7.2f}"
                         f"{_f(a.get('teacher_mAP_on_uploads'), '.1f', 8)}"
                         f"{_f(a.get('edge_mAP_on_uploads'), '.1f', 8)}")
    lines += ['', 'targets:']
    for k, t in s['targets'].items():
        lines.append(f"  {k}: {'MET' if t['met'] else 'missed'} -- "
                     + ', '.join(f'{kk}={vv:.3f}' if isinstance(vv, float) else f'{kk}={vv}'
                                 for kk, vv in t.items() if kk != 'met'))
    return '\n'.join(lines)


#: method -> (marker, colour) in the plot
METHOD_STYLE = dict(none=('o', 'tab:gray'), norm_stats=('s', 'tab:blue'),
                    tent=('D', 'tab:green'), cema=('*', 'tab:red'),
                    upload_all=('^', 'tab:purple'), random=('v', 'tab:brown'))


def plot(res, path, title=None) -> None:
    """Per severity: each method's online edge-exit mAP (bars: range over the order seeds)
    against the share of images it uploaded for adaptation."""
    from ecc_tools.plotting import legend_beside, pyplot, save
    s = res['summary']
    sevs = list(s['by_severity'])
    fig, axes = pyplot().subplots(1, len(sevs), figsize=(6.0 * len(sevs), 4.4), squeeze=False,
                                  sharey=True)
    for ax, sev in zip(axes[0], sevs):
        for m, a in s['by_severity'][sev].items():
            marker, color = METHOD_STYLE.get(m.split('@')[0], ('o', None))
            face = 'none' if '@' in m else color  # another teacher: an open marker
            lo, hi = a.get('edge_mAP_range') or (a['edge_mAP'], a['edge_mAP'])
            ax.errorbar(100 * a['upload_ratio'], a['edge_mAP'], capsize=3, color=color,
                        yerr=[[max(0.0, a['edge_mAP'] - lo)], [max(0.0, hi - a['edge_mAP'])]],
                        marker=marker, ms=11 if marker == '*' else 7, ls='none', alpha=0.85,
                        mfc=face,
                        label=f"{m}: {a['edge_mAP']:.1f} mAP, {100 * a['upload_ratio']:.0f} %")
        ax.axhline(s['clean_edge_mAP'], ls='--', c='k', lw=0.8,
                   label=f"clean, no adaptation: {s['clean_edge_mAP']:.1f} mAP")
        ax.set_xlabel('images uploaded for adaptation (%)')
        ax.set_xlim(-8, 108)
        ax.set_title(f'severity {sev}')
        ax.grid(True, alpha=0.3)
        legend_beside(ax, loc='upper center', bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7.5)
    axes[0][0].set_ylabel('online edge-exit bbox mAP (COCO, %),\nmean over corruptions')
    fig.suptitle(title or f"Online adaptation on corrupted streams ({len(res['corruptions'])} "
                 f"corruptions, {len(res['seeds'])} order seed(s); bars: range over seeds)")
    save(fig, path)


def _report(res, out):
    text = table(res)
    stem = write_report(out, res, text)
    plot(res, stem + '.png')
    print('\n' + text + f'\n\nwritten: {out}, {stem}.txt, {stem}.png')
    return res


def _merged(args) -> dict:
    """``--from-json``: the runs' rows and clean streams together, summarised again."""
    import json
    runs = [json.load(open(f)) for f in args.from_json]
    res = dict(runs[0], rows=[r for run in runs for r in run['rows']],
               clean=[c for run in runs for c in run['clean']],
               seeds=sorted({s for run in runs for s in run['seeds']}))
    methods = method_order({r['method'] for r in res['rows']})
    res['summary'] = summarize(res['rows'], res['clean'], methods, res['severities'],
                               res['corruptions'], target_ratio(res['loop']))
    return res


def _runner(args):
    """A Runner of CONFIG (an OnlineAdaptationLoop) from CHECKPOINT -> (runner, its loop
    settings); unknown corruptions, methods or severities are refused first."""
    from mmengine.runner import Runner
    from ecc_mmdet.apis import load_config
    from ecc_mmdet.datasets.transforms import CORRUPTIONS
    from ecc_mmdet.engine.runner import METHODS
    bad = [c for c in args.corruptions if c not in CORRUPTIONS]
    badm = [m for m in args.methods if m not in METHODS]
    if bad or badm or any(not 1 <= s <= 5 for s in args.severities):
        raise SystemExit(f'error: unknown corruption(s) {bad} (choose from '
                         f'{", ".join(CORRUPTIONS)}), unknown method(s) {badm} (choose from '
                         f'{", ".join(METHODS)}) or a severity outside 1..5: {args.severities}')
    cfg = load_config(args.config, args.data_root, args.cfg_options)
    if cfg.get('test_cfg', {}).get('type') != 'OnlineAdaptationLoop':
        raise SystemExit('error: the config does not select OnlineAdaptationLoop as its test_cfg '
                         '(e.g. configs/ecc_faster_rcnn_r18_synthetic_cema.py)')
    cfg.load_from = args.checkpoint
    cfg.work_dir = tempfile.mkdtemp(prefix='online_adaptation_')
    cfg.log_level = 'WARNING'
    base_loop = dict(cfg.test_cfg)
    return Runner.from_cfg(cfg), base_loop


def _run_loop(runner, base_loop, num_images, method, streams, seed, reset=True, **extra):
    """One method over ``streams`` -> the loop's per-stream results."""
    loop = copy.deepcopy(base_loop)
    loop.update(method=method.split('@')[0], corruptions=streams, order_seed=seed,
                reset=reset, num_images=num_images, out_file=None, log_interval=0, **extra)
    if not method.startswith('cema'):
        loop.pop('selector', None)
    runner._test_loop = loop
    runner.test()
    # the router's and the score maps' calibration is deterministic: once is enough
    runner._hooks = [h for h in runner._hooks if type(h).__name__ != 'RouterCalibrationHook']
    return runner.test_loop.results


def _seed_rows(args, run, seed, streams, order):
    """Every method on every stream with one order seed -> (rows, clean-stream rows)."""
    rows = []
    clean = [dict(r, seed=seed) for r in run('none', [], seed)]
    print(f'- seed {seed} clean: edge mAP {clean[-1]["edge_mAP"]:.1f}', flush=True)
    cema = {}
    for m in order:
        if m.split('@')[0] == 'random':
            ref = m.replace('random', 'cema', 1)
            if ref not in cema:
                raise SystemExit('error: the random control uploads at CEMA\'s ratio: '
                                 'include cema in --methods')
            res = []
            for st in streams:
                res += run(m, [st], seed, random_ratio=cema[ref][f'{st[0]}@{st[1]}'])
        else:
            res = run(m, streams, seed)
        for r in res:
            rows.append(dict(r, seed=seed, mode='reset', method=m))
            if m.split('@')[0] == 'cema':
                cema.setdefault(m, {})[r['stream']] = r['upload_ratio']
        print(f'- seed {seed} {m}: edge mAP ' + ', '.join(
            f"{r['stream']} {r['edge_mAP']:.1f}" for r in res), flush=True)
    if args.continual and 3 in args.severities:
        for m in ('none', 'cema'):
            for r in run(m, [(c, 3) for c in args.corruptions], seed, reset=False):
                rows.append(dict(r, seed=seed, mode='continual'))
    return rows, clean


@contextlib.contextmanager
def _cloud(args, runner):
    """``--through-server``: the loop's ``remote`` setting of a server started here, stopped on
    exit; None in process."""
    if not args.through_server:
        yield None
        return
    import torch
    from ecc_tools.e2e import write_token
    from ecc_tools.serving_bench import server
    cfg = runner.cfg
    per_round = int(cfg.test_dataloader.get('batch_size', 1)) * int(
        cfg.test_cfg.get('update_interval', 1))
    data_root = args.data_root or cfg.test_dataloader.dataset.get('data_root')
    with tempfile.TemporaryDirectory(prefix='adapt_server_') as tmp:
        token_file = write_token(osp.join(tmp, 'token'))
        extra = ['--adapt', '--adapt-max-pending', max(64, per_round), '--data-root', data_root]
        with server(args.config, args.checkpoint, None, args.cfg_option_strings,
                    threads=torch.get_num_threads(), extra_args=extra, log_dir=tmp,
                    token_file=token_file) as (url, _):
            print(f'- adapting through the server at {url}', flush=True)
            yield dict(url=url, token_file=token_file, edge_id='benchmark')


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return _report(_merged(args), args.out)
    if not args.config or not args.checkpoint:
        raise SystemExit('error: give CONFIG and CHECKPOINT (or --from-json J)')
    if args.teacher and args.through_server:
        raise SystemExit('error: --teacher runs in process; the server labels with its own '
                         'teacher (serve_cloud.py --adapt-teacher-config): run one of them')
    if len({t[0] for t in args.teacher}) < len(args.teacher) or any(
            '@' in t[0] or not t[0] for t in args.teacher):
        raise SystemExit(f'error: --teacher labels must be distinct and free of "@": '
                         f'{[t[0] for t in args.teacher]}')
    runner, base_loop = _runner(args)
    with _cloud(args, runner) as remote:
        res = _run_all(args, runner, base_loop, remote)
    return _report(res, args.out)


def _run_all(args, runner, base_loop, remote) -> dict:
    """Every method on every stream and seed -> the results (rows, clean rows, summary)."""
    teachers = {label: (cfg, ckpt) for label, cfg, ckpt in args.teacher}

    def run(method, streams, seed, reset=True, **extra):
        if remote is not None:  # the methods without a cloud ignore it
            extra['remote'] = remote
        if '@' in method:
            cfg, ckpt = teachers[method.split('@', 1)[1]]
            extra.update(teacher_config=cfg, teacher_checkpoint=ckpt)
        return _run_loop(runner, base_loop, args.num_images, method, streams, seed, reset,
                         **extra)

    streams = [(c, s) for s in args.severities for c in args.corruptions]
    rows, clean = [], []
    order = method_order([m for m in args.methods if m in METHOD_ORDER] + [
        _variant(m, label) for label, _, _ in args.teacher for m in TEACHER_METHODS
        if m in args.methods])
    for seed in args.seeds:
        seed_rows, seed_clean = _seed_rows(args, run, seed, streams, order)
        rows += seed_rows
        clean += seed_clean
    res = dict(config=args.config, checkpoint=args.checkpoint, num_images=args.num_images,
               seeds=args.seeds, corruptions=args.corruptions, severities=args.severities,
               loop=base_loop, clean=clean, rows=rows,
               teachers={label: dict(config=c, checkpoint=k) for label, c, k in args.teacher},
               summary=summarize(rows, clean, order, args.severities, args.corruptions,
                                 target_ratio(base_loop)))
    if remote is not None:
        res['through_server'] = True
    return res


if __name__ == '__main__':
    os.chdir(osp.dirname(osp.dirname(osp.abspath(__file__))))
    main()
