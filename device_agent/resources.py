"""CPU, memory and temperature of the device, read where the platform offers them."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

log = logging.getLogger(__name__)
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


class ResourceSampler:
    def __init__(self) -> None:
        try:
            import psutil

            self._process: object | None = psutil.Process()
            self._process.cpu_percent(None)  # type: ignore[attr-defined]
        except ImportError:
            self._process = None

    def cpu_percent(self) -> float | None:
        if self._process is None:
            return None
        return float(self._process.cpu_percent(None))  # type: ignore[attr-defined]

    def rss_mb(self) -> float:
        if self._process is not None:
            return round(self._process.memory_info().rss / 2**20, 2)  # type: ignore[attr-defined]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 2)

    @staticmethod
    def temperature_c() -> float | None:
        try:
            return int(THERMAL_ZONE.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            return None
