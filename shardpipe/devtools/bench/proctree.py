"""CPU time and peak memory of this process and all its descendants (Linux ``/proc``).

``getrusage(RUSAGE_CHILDREN)`` only counts children once they have been waited for, so a
loader whose worker processes are still alive (or are ended without a wait) would look
free. Here the live descendants are read from ``/proc`` and the reaped ones from rusage:
a child's own time plus its reaped children's (``cutime``/``cstime``) moves into our
``RUSAGE_CHILDREN`` exactly when it is reaped, so the sum stays consistent. Without
``/proc`` only rusage is used.
"""

from __future__ import annotations

import os
import resource

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:  # the process ended meanwhile
            continue
        # the command name may hold spaces or parentheses: fields start after the last ')'
        fields = raw[raw.rfind(")") + 2 :].split()
        ppid = int(fields[1])
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        table[int(name)] = (ppid, (utime + stime + cutime + cstime) / _TICK)
    return table


def descendants(root: int | None = None) -> dict[int, float]:
    """Live descendants of ``root`` (default: this process) -> their CPU seconds."""
    root = os.getpid() if root is None else root
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, float] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process, its reaped children and its live descendants."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = sum(descendants().values())
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + live


def _peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def worker_peak_rss_mb() -> tuple[float, float]:
    """(sum, largest) of the peak RSS of the live descendants, else of the reaped ones (MB).

    A sum over forked workers counts pages they share with the parent more than once: an
    upper bound of what they hold together.
    """
    peaks = [_peak_rss_mb(pid) for pid in descendants()]
    if peaks:
        return sum(peaks), max(peaks)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return reaped, reaped
