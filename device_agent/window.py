"""One telemetry window's counters: pure logic, no I/O, so it is tested without a broker.

Latencies go into a preallocated array that grows by doubling, not a Python list rescanned per
sample; percentiles are computed once, when the window closes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowSummary:
    inferences: int
    errors: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_ms_p99: float | None


class WindowStats:
    def __init__(self, capacity: int = 1024) -> None:
        self._latency_ms = np.empty(capacity, dtype=np.float64)
        self._capacity = capacity
        self._n = 0
        self.errors = 0

    def record(self, latency_ms: float) -> None:
        n = self._n
        if n == self._capacity:
            self._latency_ms = np.resize(self._latency_ms, 2 * self._capacity)
            self._capacity *= 2
        self._latency_ms[n] = latency_ms
        self._n = n + 1

    def record_error(self) -> None:
        self.errors += 1

    @property
    def inferences(self) -> int:
        return self._n

    def summary(self) -> WindowSummary:
        if self._n == 0:
            return WindowSummary(0, self.errors, None, None, None)
        p50, p95, p99 = np.percentile(self._latency_ms[: self._n], [50, 95, 99])
        return WindowSummary(self._n, self.errors, round(float(p50), 4), round(float(p95), 4), round(float(p99), 4))

    def reset(self) -> None:
        self._n = 0
        self.errors = 0
