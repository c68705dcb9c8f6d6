"""The benchmark plots' shared conventions: a headless backend, byte axes in KB on a log scale
with plain tick labels (0.25, 0.5, 1, 2 ... rather than 10^x), a legend beside the axes (never
over the data), and one way of saving.
"""
from typing import Iterable

#: byte-axis ticks in KB: powers of two a reader can read off; for narrow ranges, also the
#: points halfway between them on the log scale's usual grid (0.75, 1.5, 3, 6 ...)
KB_TICKS = tuple(2.0 ** k for k in range(-6, 14))
KB_FINE_TICKS = tuple(sorted(KB_TICKS + tuple(1.5 * t for t in KB_TICKS)))
#: above this many ticks, every other one is labelled
MAX_TICKS = 9


def pyplot():
    """matplotlib.pyplot on the Agg backend (benchmarks run headless)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def kb_ticks(kbs: Iterable[float]):
    """(ticks, (xmin, xmax)): the data range ``kbs`` (in KB, positive values) with a margin,
    and plain ticks inside it: powers of two, or finer when fewer than three of those fit (at
    least two ticks: a narrower range is widened to them)."""
    kbs = [k for k in kbs if k > 0]
    if not kbs:
        return [], None
    lim = (min(kbs) / 1.3, max(kbs) * 1.3)
    ticks = [t for t in KB_TICKS if lim[0] <= t <= lim[1]]
    if len(ticks) < 3:
        ticks = [t for t in KB_FINE_TICKS if lim[0] <= t <= lim[1]]
    if len(ticks) < 2:  # a narrow range: widen it to the fine ticks around it
        below = max([t for t in KB_FINE_TICKS if t <= lim[0]], default=lim[0])
        above = min([t for t in KB_FINE_TICKS if t >= lim[1]], default=lim[1])
        lim = (below / 1.05, above * 1.05)
        ticks = [t for t in KB_FINE_TICKS if below <= t <= above]
    if len(ticks) > MAX_TICKS:
        ticks = ticks[::2]
    return ticks, lim


def kb_log_axis(ax, kbs: Iterable[float], what: str = 'uplink KB per image') -> None:
    """A log x axis in KB whose ticks are plain numbers at powers of two spanning ``kbs``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    ticks, lim = kb_ticks(kbs)
    ax.set_xscale('log')
    if lim:
        ax.set_xlim(*lim)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f'{what} (log scale; 1 KB = 1000 bytes)')


def legend_beside(ax, **kw) -> None:
    """The legend right of the axes, top-aligned: it never hides a point."""
    kw = dict(dict(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False), **kw)
    ax.legend(**kw)


def save(fig, path: str, dpi: int = 120) -> None:
    """Write ``fig`` (cropped to what is drawn, legends beside the axes included) and close it."""
    fig.savefig(path, dpi=dpi, bbox_inches='tight')
    pyplot().close(fig)
