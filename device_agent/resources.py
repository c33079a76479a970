"""CPU, memory and temperature of the agent process, read where the platform offers them.

On Linux (every Raspberry Pi) straight from /proc: no psutil import, which alone costs about a
megabyte of resident memory on a device. Elsewhere psutil is used when installed.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
PROC_STAT = Path("/proc/self/stat")
PROC_STATM = Path("/proc/self/statm")


class ResourceSampler:
    def __init__(self) -> None:
        self._process: Any = None
        self._proc = PROC_STAT.exists() and PROC_STATM.exists()
        self._ticks = os.sysconf("SC_CLK_TCK") if self._proc else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if self._proc else 4096
        self._last = self._cpu_seconds(), time.monotonic()
        if not self._proc:
            try:
                import psutil

                self._process = psutil.Process()
                self._process.cpu_percent(None)
            except ImportError:
                log.info("neither /proc nor psutil: telemetry has no cpu_percent")

    def _cpu_seconds(self) -> float | None:
        if not self._proc:
            return None
        # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        fields = PROC_STAT.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def cpu_percent(self) -> float | None:
        """CPU used by this process since the previous call, in percent of one core."""
        if self._process is not None:
            return float(self._process.cpu_percent(None))
        cpu, now = self._cpu_seconds(), time.monotonic()
        last_cpu, last_now = self._last
        self._last = cpu, now
        if cpu is None or last_cpu is None or now <= last_now:
            return None
        return round(100.0 * (cpu - last_cpu) / (now - last_now), 2)

    def rss_mb(self) -> float:
        if self._proc:
            return round(int(PROC_STATM.read_text().split()[1]) * self._page / 2**20, 2)
        if self._process is not None:
            return round(float(self._process.memory_info().rss) / 2**20, 2)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 2)

    @staticmethod
    def temperature_c() -> float | None:
        try:
            return int(THERMAL_ZONE.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            return None
