"""Fragmentation pictures (optional: needs matplotlib, ``pip install pagebuddy[plot]``).

:func:`plot_run` writes a PNG of a lockstep run with three panels, read as one reads
``/proc/buddyinfo`` and ``extfrag_index``:

* free memory over the run, in pages on a linear axis, stacked by the order of the free
  block that holds it (the band of order k is ``2**k`` times the free blocks of order k);
* Linux's ``extfrag_index`` over the run for the order the run was refused most (else that
  of the map's blocks), with every out-of-memory refusal marked above it;
* the arena at the end, one cell per page and one row per aligned run of pages (an order-9
  block, 2 MiB of 4 KiB pages, in the demo), pfns on the axis, block boundaries drawn,
  reserved pages in their own colour.

The title names the workload (the caller's ``title``), the pool and its policy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import _frag
from ._lockstep import PAGE_FREE, PAGE_HELD, PAGE_RESERVED, PAGE_SHARED, RunResult
from ._rules import Geometry

__all__ = ["PlotUnavailable", "plot_run"]

INSTALL_HINT = "pip install 'pagebuddy[plot]'"

_STATE_COLOURS = {
    PAGE_FREE: ("free", "#cfe8c4"),
    PAGE_HELD: ("held", "#3b6fb6"),
    PAGE_SHARED: ("shared (refcount > 1)", "#f28e2b"),
    PAGE_RESERVED: ("reserved", "#1a1a1a"),
}
#: One colour per order, neighbours of contrasting hue (matplotlib's tab10, then black);
#: orders past the eleventh reuse them.
_ORDER_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#000000",
]
_OOM_COLOUR = "#d62728"
#: The block order whose boundaries the arena map draws: 2 MiB of 4 KiB pages, as a huge page.
_BLOCK_ORDER = 9


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(
            f"--plot needs matplotlib, which is not installed; install the 'plot' extra: "
            f"{INSTALL_HINT}"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: RunResult, path: str, title: str = "pagebuddy") -> None:
    """Write the PNG for ``result`` (needs ``samples`` and ``arena_map``) to ``path``,
    exactly that file whatever its extension; :class:`OSError` if it cannot be written.
    ``title`` names the workload.

    Raises :class:`PlotUnavailable` when matplotlib is missing.
    """
    plt = _pyplot()
    fig = plt.figure(figsize=(15, 7.4), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.15, 1], height_ratios=[2.6, 1])
    ax_free = fig.add_subplot(grid[0, 0])
    ax_frag = fig.add_subplot(grid[1, 0], sharex=ax_free)
    ax_map = fig.add_subplot(grid[:, 1])
    fig.suptitle(_title(result, title), fontsize=11)
    _free_pages_panel(ax_free, result)
    _extfrag_panel(ax_frag, result)
    _arena_panel(ax_map, result)
    try:
        # The path as given, whatever its extension (savefig would add ".png" to a name
        # without one and pick the format from any other).
        with open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


def _title(result: RunResult, title: str) -> str:
    """The workload (the caller's title, with the operations run), then the pool and policy."""
    g = result.geometry
    orders = g.max_order
    pool = (
        f"{g.nr_pages:,} pages of {_size(g.page_size)} ({_size(g.nr_pages * g.page_size)}) "
        f"from pfn {g.base_pfn:#x}, {g.reserved_pages:,} reserved; orders 0 to {orders - 1} "
        f"(up to {_size(g.page_size << (orders - 1))})"
    )
    policy = f"pKVM hyp_pool policy: FIFO free lists, buddy merging, zero={g.zero}"
    if g.links != "side":
        policy += f", {g.links} links"
    cpus = dict(g.options).get("cpus")
    if cpus:
        policy += f", per-CPU caches on {cpus} CPUs"
    return f"{title}: {len(result.ops):,} operations\n{pool}. {policy}"


def _free_pages_panel(ax: Any, result: RunResult) -> None:
    """Free pages over the run, stacked by the order of the block holding them, the largest
    orders at the bottom."""
    g = result.geometry
    steps = [s for s, _ in result.samples]
    orders = max((len(b) for _, b in result.samples), default=0)
    pages = [[(b[k] << k) if k < len(b) else 0 for _, b in result.samples] for k in range(orders)]
    top = g.nr_pages - g.reserved_pages
    if orders:
        ks = list(range(orders - 1, -1, -1))
        ax.stackplot(
            steps,
            *(pages[k] for k in ks),
            colors=[_ORDER_COLOURS[k % len(_ORDER_COLOURS)] for k in ks],
            labels=[f"order {k}: {_size(g.page_size << k)}" for k in ks],
            linewidth=0,
        )
        # Legend top to bottom as the bands: order 0 first.
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(
            handles[::-1],
            labels[::-1],
            title="free pages in blocks of",
            title_fontsize=8,
            fontsize=7.5,
            ncol=min(orders, 4),
            loc="upper right",
            framealpha=0.9,
        )
    ax.axhline(top, color="#444444", lw=0.8, ls="--")
    ax.text(
        0.005,
        top,
        f" {top:,} pages: all but the reserved",
        transform=ax.get_yaxis_transform(),
        va="bottom",
        fontsize=7.5,
        color="#444444",
    )
    ax.set_ylim(0, top * 1.45)
    ax.set_ylabel("free pages")
    ax.set_title("Free memory by the order of its block: free blocks (buddyinfo) times their size")
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelbottom=False)
    mib = g.page_size / 2**20
    side = ax.secondary_yaxis("right", functions=(lambda p: p * mib, lambda m: m / mib))
    side.set_ylabel("MiB")


def _story_order(result: RunResult) -> int:
    """The order to follow: the one refused most often, else that of the map's blocks."""
    top = result.geometry.max_order - 1
    asked = Counter(k for _, k in result.out_of_memory if 0 <= k <= top)
    return asked.most_common(1)[0][0] if asked else max(0, min(_BLOCK_ORDER, top))


def _extfrag_panel(ax: Any, result: RunResult) -> None:
    """``extfrag_index`` of the story order over the run, out-of-memory refusals above it."""
    g = result.geometry
    k = _story_order(result)
    steps = [s for s, _ in result.samples]
    index = [_frag.extfrag_index(b, k) / 1000 for _, b in result.samples]
    ax.step(steps, index, where="post", color=_ORDER_COLOURS[k % len(_ORDER_COLOURS)], lw=1.4)
    ax.axhline(0, color="#999999", lw=0.6)
    ax.set_ylim(-1.12, 1.55)
    ax.set_yticks([-1, 0, 0.5, 1])
    ax.set_ylabel(f"extfrag_index\norder {k}")
    ax.set_xlabel("operations")
    ax.grid(True, alpha=0.3)
    if index:
        ax.annotate(
            f"{index[-1]:.3f}",
            (steps[-1], index[-1]),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    refused = result.out_of_memory
    by_order = Counter(o for _, o in refused)
    if refused:
        ax.vlines([s for s, _ in refused], 1.15, 1.5, color=_OOM_COLOUR, lw=0.5)
        orders = ", ".join(f"order {o}: {n:,}" for o, n in sorted(by_order.items()))
        oom = f"out-of-memory refusals marked in red ({len(refused):,}; {orders})"
    else:
        n = result.rejected.get("OutOfMemory", 0)
        oom = f"{n:,} out-of-memory refusals" if n else "no out-of-memory refusal"
    ax.set_title(
        f"Linux extfrag_index of an order-{k} request ({_size(g.page_size << k)}); {oom}\n"
        "-1: it would succeed; towards 0 it fails for lack of memory, towards 1 because free "
        "memory is fragmented",
        fontsize=8.5,
        loc="left",
    )


def _arena_layout(g: Geometry) -> tuple[int, int, int]:
    """``(row, offset, rows)``: pages per row (a power of two, rows start at pfns aligned to
    it), the cell of the first page, and the number of rows."""
    row = 1 << max(0, min(_BLOCK_ORDER, g.max_order - 1))
    span = lambda r: g.base_pfn % r + g.nr_pages  # noqa: E731
    while span(row) / row > 96:
        row *= 2
    while row > 8 and span(row) / row < 8:
        row //= 2
    offset = g.base_pfn % row
    return row, offset, math.ceil((offset + g.nr_pages) / row)


def _arena_panel(ax: Any, result: RunResult) -> None:
    """The arena at the end: pages by state, rows of aligned pfns, block boundaries."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    g = result.geometry
    states: Sequence[int] = result.arena_map
    row, offset, rows = _arena_layout(g)
    nan = float("nan")
    cells = [[nan] * row for _ in range(rows)]
    for i, s in enumerate(states):
        cells[(offset + i) // row][(offset + i) % row] = float(s)
    colours = [_STATE_COLOURS[s][1] for s in sorted(_STATE_COLOURS)]
    ax.imshow(
        cells,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        interpolation="nearest",
        aspect="auto",
        extent=(0, row, rows, 0),
    )
    first = g.base_pfn - offset
    block = 1 << max(0, min(_BLOCK_ORDER, g.max_order - 1))
    if block >= row:
        every = block // row
        for r in range(every, rows, every):
            ax.axhline(r, color="white", lw=0.8)
    else:
        for x in range(block, row, block):
            ax.axvline(x, color="white", lw=0.8)
    step = max(1, math.ceil(rows / 16))
    ax.set_yticks([r + 0.5 for r in range(0, rows, step)])
    ax.set_yticklabels([f"{first + r * row:#x}" for r in range(0, rows, step)], fontsize=7.5)
    ax.set_ylabel("pfn of the row's first page")
    ax.set_xticks([row * q // 4 for q in range(5)])
    ax.set_xlabel(f"page within the row (+0 to +{row - 1})")
    size = f"{block} pages, {_size(block * g.page_size)}"
    if block == row:
        where = f"each row is an order-{_size_order(block)} block ({size})"
    else:
        where = f"white lines mark the order-{_size_order(block)} blocks ({size})"
    ax.set_title(f"Arena at the end: {row} pages a row; {where}", fontsize=9.5)
    count = Counter(states)
    labels = {s: f"{label}: {count.get(s, 0):,}" for s, (label, _) in _STATE_COLOURS.items()}
    if g.reserved_pages:
        last = g.base_pfn + g.reserved_pages - 1
        labels[PAGE_RESERVED] += f" (pfns {g.base_pfn:#x} to {last:#x}, outlined)"
        # An outline around the reserved pages, row by row, so that a few are found at once.
        for i in range(offset, offset + g.reserved_pages, row):
            r, c = divmod(i, row)
            width = min(row - c, offset + g.reserved_pages - i)
            outline = Rectangle((c, r), width, 1, fill=False, ec="#ffd400", lw=1.6)
            ax.add_patch(outline)
    ax.legend(
        handles=[Patch(color=c, label=labels[s]) for s, (_, c) in sorted(_STATE_COLOURS.items())],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.07),
        ncol=2,
        fontsize=8,
        frameon=False,
        title="pages",
        title_fontsize=8,
    )


def _size_order(pages: int) -> int:
    return pages.bit_length() - 1


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:g} {unit}"
        nbytes //= 1024
    return f"{nbytes} B"
