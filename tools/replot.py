"""Re-draw a benchmark's plot from its saved JSON, without running any model.

    python tools/replot.py docs/benchmarks/rate_accuracy_val500_hyperprior.json \
        [--out PNG] [--title TITLE] [--rate-accuracy-json JSON]

The benchmark is recognised from the JSON: rate-accuracy rows (tools/benchmark_rate_accuracy.py,
the demo), dynamic inference (tools/benchmark_dynamic.py), online adaptation, robustness and
serving. The PNG defaults to the JSON's path with ``.png``. ``--rate-accuracy-json`` (dynamic
inference only): the input-codec rows drawn beside; by default the file its run's command named,
when it exists.
"""
import argparse
import json
import os.path as osp
import shlex
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(REPO, 'tools'))
KINDS = ('rate_accuracy', 'dynamic', 'online_adaptation', 'robustness', 'serving')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('json', help='a benchmark JSON')
    p.add_argument('--out', help='the PNG (default: the JSON with .png)')
    p.add_argument('--title', help='the figure title (default: one that names the benchmark)')
    p.add_argument('--rate-accuracy-json', help='dynamic inference: input-codec rows beside')
    return p.parse_args(argv)


def kind_of(res) -> str:
    """Which benchmark wrote ``res`` (one of KINDS), from the fields only it has."""
    rows = res.get('rows') or [{}]
    summary = res.get('summary') if isinstance(res.get('summary'), dict) else {}
    if 'levels' in res:
        return 'serving'
    if 'by_severity' in summary:
        return 'online_adaptation'
    if 'mPC' in summary:
        return 'robustness'
    if 'variant' in rows[0]:
        return 'dynamic'
    if 'method' in rows[0] and 'bytes_per_image' in rows[0]:
        return 'rate_accuracy'
    raise SystemExit(f'error: not the JSON of a benchmark with a plot ({", ".join(KINDS)})')


def _rate_accuracy_rows(res, path):
    """The rate-accuracy rows for a dynamic plot: ``path``, or the file its command named."""
    if path is None:
        words = shlex.split(res.get('command') or '')
        named = [b for a, b in zip(words, words[1:]) if a == '--rate-accuracy-json']
        path = next((osp.join(REPO, n) for n in named if osp.exists(osp.join(REPO, n))), None)
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)['rows']


def replot(json_path: str, out=None, title=None, rate_accuracy_json=None) -> str:
    """Draw the plot of the benchmark JSON ``json_path`` to ``out``; returns the PNG's path."""
    with open(json_path) as f:
        res = json.load(f)
    out = out or osp.splitext(json_path)[0] + '.png'
    kind = kind_of(res)
    if kind == 'rate_accuracy':
        from ecc_tools.rate_accuracy import plot
        plot(res['rows'], out, title)
    elif kind == 'dynamic':
        from ecc_tools.dynamic import plot
        plot(res, out, _rate_accuracy_rows(res, rate_accuracy_json), title)
    elif kind == 'online_adaptation':
        from benchmark_online_adaptation import plot
        plot(res, out, title)
    elif kind == 'robustness':
        from benchmark_robustness import plot
        plot(res, out, title)
    else:
        from ecc_tools.serving_bench import plot
        plot(res, out, title)
    return out


def main(argv=None):
    args = parse_args(argv)
    out = replot(args.json, args.out, args.title, args.rate_accuracy_json)
    print(f'written: {out}')


if __name__ == '__main__':
    main()
