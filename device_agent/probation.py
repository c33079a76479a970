"""Probation: a newly activated model serves live traffic under watch before it is committed.

Pure logic with an injected clock. The verdict comes after ``min_inferences`` inferences or
``max_seconds``, whichever is first, and earlier when the error budget is already blown, so a bad
model is rolled back after a handful of failures instead of a full window.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from edgeops.errors import ConfigError


@dataclass(frozen=True)
class ProbationPolicy:
    #: Inferences to watch before a verdict.
    min_inferences: int = 50
    #: Seconds after which a verdict is given even with fewer inferences (an idle device commits).
    max_seconds: float = 30.0
    #: Share of failed inferences allowed.
    max_error_rate: float = 0.05
    #: p95 latency budget in milliseconds; None disables the latency check.
    max_latency_ms_p95: float | None = None

    def __post_init__(self) -> None:
        if self.min_inferences < 1 or self.max_seconds <= 0:
            raise ConfigError("probation needs min_inferences >= 1 and max_seconds > 0")
        if not 0 <= self.max_error_rate <= 1:
            raise ConfigError("probation max_error_rate must be within [0, 1]")


class Verdict(str, enum.Enum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"


@dataclass(frozen=True)
class ProbationResult:
    verdict: Verdict
    reason: str
    inferences: int
    errors: int
    latency_ms_p95: float | None


class ProbationTracker:
    def __init__(self, policy: ProbationPolicy, started_s: float) -> None:
        self.policy = policy
        self.started_s = started_s
        self._latencies: list[float] = []
        self.errors = 0

    def record(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)

    def record_error(self) -> None:
        self.errors += 1

    @property
    def total(self) -> int:
        return len(self._latencies) + self.errors

    def verdict(self, now_s: float) -> ProbationResult:
        p = self.policy
        total = self.total
        p95 = float(np.percentile(self._latencies, 95)) if self._latencies else None
        # The error budget for the whole probation is already exceeded: no need to wait.
        if self.errors > p.max_error_rate * max(p.min_inferences, total):
            return self._result(Verdict.FAILED, f"{self.errors} errors in {total} inferences exceed "
                                f"the {p.max_error_rate:.1%} budget", p95)
        if total < p.min_inferences and now_s - self.started_s < p.max_seconds:
            return self._result(Verdict.PENDING, "watching", p95)
        if total and self.errors / total > p.max_error_rate:
            return self._result(Verdict.FAILED, f"error rate {self.errors / total:.1%} exceeds "
                                f"{p.max_error_rate:.1%}", p95)
        if p.max_latency_ms_p95 is not None and p95 is not None and p95 > p.max_latency_ms_p95:
            return self._result(Verdict.FAILED, f"p95 latency {p95:.3f} ms exceeds the "
                                f"{p.max_latency_ms_p95:.3f} ms budget", p95)
        return self._result(Verdict.PASSED, f"{total} inferences, {self.errors} errors", p95)

    def _result(self, verdict: Verdict, reason: str, p95: float | None) -> ProbationResult:
        return ProbationResult(verdict, reason, self.total, self.errors, p95)
