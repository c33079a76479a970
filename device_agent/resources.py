"""CPU, memory and temperature of the device, read where the platform offers them."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


class ResourceSampler:
    def __init__(self) -> None:
        self._process: Any = None
        try:
            import psutil

            self._process = psutil.Process()
            self._process.cpu_percent(None)
        except ImportError:
            log.info("psutil not installed: telemetry has no cpu_percent")

    def cpu_percent(self) -> float | None:
        if self._process is None:
            return None
        return float(self._process.cpu_percent(None))

    def rss_mb(self) -> float:
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
