"""What every benchmark records about the machine it ran on (each script adds the versions it depends on), and how
the timing benchmarks take turns.

Benchmarks are run as scripts (``python benchmarks/bench_x.py``), which puts this folder first on ``sys.path``,
so they import this module as ``_machine``.
"""

from __future__ import annotations

import datetime
import os
import platform
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def host_info(**extra) -> dict:
    """Date, platform, CPU, memory and the load average at the start (this machine may be shared), plus ``extra``."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
        **extra,
    }


def take_turns(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each of ``runs`` (name -> function of no arguments).

    The runs take turns within each repeat, so a burst of load on a shared machine hits all of them, not one.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times
