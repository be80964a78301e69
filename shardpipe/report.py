"""Format the per-stage timing table that the demo and the benchmark print."""

from __future__ import annotations

from shardpipe.stats import STAGES, SharedStats


def format_stage_table(stats: SharedStats, wall_seconds: float, images: int) -> str:
    """Seconds per 1000 samples per stage (summed over workers and threads), and images/s."""
    table = stats.stage_table()
    busy = sum(table.values())
    lines = [
        "stage      s/1000 samples   share",
        "---------  --------------  ------",
    ]
    fused = table["augment"] == 0.0 and table["decode"] > 0.0
    for stage in STAGES:
        share = table[stage] / busy if busy else 0.0
        if stage == "augment" and fused:
            lines.append(f"{stage:<9}  {'(in decode)':>14}          crop-aware decode: one step")
            continue
        lines.append(f"{stage:<9}  {table[stage]:>14.3f}  {share:>6.1%}")
    lines.append(f"{'total':<9}  {busy:>14.3f}")
    if images and wall_seconds:
        lines.append(
            f"(times are summed over all workers and threads; wall clock: "
            f"{1000 * wall_seconds / images:.3f} s/1000 samples = {images / wall_seconds:.0f} images/s)"
        )
    return "\n".join(lines)
