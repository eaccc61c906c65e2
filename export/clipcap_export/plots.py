"""PNG plots of runs (training loss, the prefix-length study), with matplotlib's file-only backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@contextmanager
def figure(png: Path, size: tuple[float, float]) -> Iterator[Axes]:
    """Axes to draw on; when the block ends, the legend is added and the figure saved to `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.legend()
        fig.tight_layout()
        fig.savefig(png, dpi=100)
    finally:
        plt.close(fig)
