"""Fragmentation pictures (optional: needs matplotlib, ``pip install pagebuddy[plot]``).

:func:`plot_run` writes a PNG with two panels: the number of free blocks of each
order over the run, and a map of the arena at the end, one cell per page,
coloured by state (free, held, shared, reserved).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ._lockstep import PAGE_FREE, PAGE_HELD, PAGE_RESERVED, PAGE_SHARED, RunResult

__all__ = ["PlotUnavailable", "plot_run"]

INSTALL_HINT = "pip install 'pagebuddy[plot]'"

_STATE_COLOURS = {
    PAGE_FREE: ("free", "#d9f0d3"),
    PAGE_HELD: ("held", "#3b6fb6"),
    PAGE_SHARED: ("shared (refcount > 1)", "#f28e2b"),
    PAGE_RESERVED: ("reserved", "#555555"),
}


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


def _grid(states: Sequence[int]) -> tuple[list[list[float]], int]:
    n = len(states)
    width = 1 << max(0, math.ceil(math.log2(max(1, math.isqrt(n)))))
    rows = math.ceil(n / width)
    nan = float("nan")
    grid = [[nan] * width for _ in range(rows)]
    for i, s in enumerate(states):
        grid[i // width][i % width] = float(s)
    return grid, width


def plot_run(result: RunResult, path: str, title: str = "pagebuddy") -> None:
    """Write the two-panel PNG for ``result`` (needs ``samples`` and ``arena_map``) to ``path``,
    exactly that file whatever its extension; :class:`OSError` if it cannot be written.

    Raises :class:`PlotUnavailable` when matplotlib is missing.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    g = result.geometry
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.35, 1]}, constrained_layout=True
    )
    fig.suptitle(title)

    steps = [s for s, _ in result.samples]
    orders = max((len(b) for _, b in result.samples), default=0)
    cmap = plt.get_cmap("turbo")
    for k in range(orders):
        ys = [b[k] if k < len(b) else 0 for _, b in result.samples]
        colour = cmap(0.05 + 0.9 * k / max(1, orders - 1))
        ax1.plot(steps, ys, label=f"{k}: {_size(g.page_size << k)}", color=colour, lw=1.3)
    ax1.set_yscale("symlog", linthresh=1)
    ax1.set_xlabel("operations")
    ax1.set_ylabel("free blocks")
    ax1.set_title("Free blocks per order over the run")
    ax1.grid(True, alpha=0.3)
    if orders:
        ax1.legend(
            title="order: block size",
            title_fontsize=8,
            fontsize=7,
            ncol=min(orders, 6),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            frameon=False,
        )

    grid, width = _grid(result.arena_map)
    colours = [_STATE_COLOURS[s][1] for s in sorted(_STATE_COLOURS)]
    ax2.imshow(
        grid,
        cmap=ListedColormap(colours),
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        interpolation="nearest",
        aspect="auto",
    )
    ax2.set_title(f"Arena at the end: {g.nr_pages} pages from pfn {g.base_pfn:#x}, {width} per row")
    ax2.set_xticks([])
    ax2.set_yticks([])
    present = set(result.arena_map)
    ax2.legend(
        handles=[
            Patch(color=c, label=label)
            for s, (label, c) in sorted(_STATE_COLOURS.items())
            if s in present
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    try:
        # The path as given, whatever its extension (savefig would add ".png" to a name
        # without one and pick the format from any other).
        with open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:g} {unit}"
        nbytes //= 1024
    return f"{nbytes} B"
