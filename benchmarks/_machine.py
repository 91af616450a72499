"""What every benchmark records about the machine it ran on; each script adds the versions it depends on.

Benchmarks are run as scripts (``python benchmarks/bench_x.py``), which puts this folder first on ``sys.path``,
so they import this module as ``_machine``.
"""

from __future__ import annotations

import datetime
import os
import platform


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
