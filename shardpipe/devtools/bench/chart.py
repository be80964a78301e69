"""The bar chart of ``shardpipe bench --peers`` (matplotlib: a bench-environment package only)."""

from __future__ import annotations

import textwrap
from typing import Any

_OURS = "#d9480f"  # shardpipe's row
_PEER = "#4c6ef5"
_REFERENCE = "#868e96"  # the kernel alone and the floor: what the pipeline is read against, not loaders


def bar_color(name: str) -> str:
    """shardpipe's row, a reference row (``peers.KERNEL``, ``peers.FLOOR``) or a peer's."""
    from shardpipe.devtools.bench.peers import FLOOR, KERNEL, SHARDPIPE

    return _OURS if name == SHARDPIPE else _REFERENCE if name in (KERNEL, FLOOR) else _PEER


def save_chart(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Two horizontal bar panels, one row per loader sorted by CPU ms/img: CPU ms per image
    (lower is better, whiskers from the fastest to the slowest round) and images/s."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["cpu_ms"], reverse=True)  # best at the top
    names = [r["name"] for r in rows]
    colors = [bar_color(r["name"]) for r in rows]
    ys = range(len(rows))
    fig, (cpu_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 1.8), sharey=True)
    cpu = [r["cpu_ms"] for r in rows]
    err = [[r["cpu_ms"] - r["cpu_lo"] for r in rows], [r["cpu_hi"] - r["cpu_ms"] for r in rows]]
    cpu_ax.barh(ys, cpu, xerr=err, color=colors, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333"})
    cpu_ax.set_xlabel(
        "CPU ms per image, all processes (lower is better)\n(Nx: relative to shardpipe; whiskers: min-max)"
    )
    for y, r in zip(ys, rows):
        label = f"{r['cpu_ms']:.2f}"
        if r["name"] != "shardpipe" and r["cpu_x_shardpipe"] == r["cpu_x_shardpipe"]:
            label += f"  ({r['cpu_x_shardpipe']:.2f}x)"
        cpu_ax.text(r["cpu_hi"] + max(cpu) * 0.02, y, label, va="center", fontsize=9)
    cpu_ax.set_xlim(0, max(r["cpu_hi"] for r in rows) * 1.45)
    rate = [r["rate"] for r in rows]
    rate_ax.barh(ys, rate, color=colors)
    rate_ax.set_xlabel("images/s (higher is better)\n(Nx: relative to webdataset + PIL)")
    for y, r in zip(ys, rows):
        label = f"{r['rate']:,.0f}"
        if r["rate_x_wds_pil"] == r["rate_x_wds_pil"]:
            label += f"  ({r['rate_x_wds_pil']:.2f}x)"
        rate_ax.text(r["rate"] + max(rate) * 0.02, y, label, va="center", fontsize=9)
    rate_ax.set_xlim(0, max(rate) * 1.55)
    cpu_ax.set_yticks(list(ys), names)
    for ax in (cpu_ax, rate_ax):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
