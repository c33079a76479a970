"""Simulated devices' inputs and faults: seeded, reproducible, with injectable drift.

Drift is applied after ``start_after`` rows, in units of each feature's reference standard
deviation (a constant feature, std 0, is shifted by ``magnitude`` in absolute units). Faults make
a version look bad on purpose (added latency, failed inferences, a crash) so rollout gates and
local rollback can be exercised against real processes.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from edgeops.errors import ConfigError, EdgeOpsError

log = logging.getLogger(__name__)
DriftKind = Literal["none", "shift", "noise", "nan_burst"]
_DRIFT_RE = re.compile(r"(none|shift|noise|nan_burst)(?::([-+0-9.eE]+))?(?:@(\d+))?")


class InjectedFault(EdgeOpsError):
    """An inference failed on purpose (simulated fault)."""

    code = "injected_fault"


@dataclass(frozen=True)
class DriftSpec:
    kind: DriftKind = "none"
    #: shift: mean shift in feature std units; noise: added noise std in feature std units;
    #: nan_burst: share of rows with NaN in the drifted features.
    magnitude: float = 0.0
    #: Rows served before the drift starts.
    start_after: int = 0
    #: Drifted feature indices; None = all.
    features: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """``none``, ``shift:1.5``, ``noise:2@100``, ``nan_burst:0.2@50``."""
        match = _DRIFT_RE.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"invalid drift {text!r}: expected KIND[:MAGNITUDE][@START_ROW], "
                              "KIND one of none, shift, noise, nan_burst")
        kind, magnitude, start = match.groups()
        try:
            value = float(magnitude) if magnitude else 0.0
        except ValueError:
            raise ConfigError(f"invalid drift magnitude in {text!r}") from None
        if kind == "nan_burst" and not 0 <= value <= 1:
            raise ConfigError("nan_burst magnitude is a share of rows in [0, 1]")
        return cls(kind, value, int(start or 0))  # type: ignore[arg-type]


@dataclass(frozen=True)
class FaultSpec:
    added_latency_ms: float = 0.0
    error_rate: float = 0.0
    #: Exit the process (os._exit(70)) at this inference count; None = never.
    crash_after: int | None = None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``latency=5,errors=0.1,crash=1000`` (any subset)."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in ("latency", "errors", "crash"):
                raise ConfigError(f"invalid fault {part!r}: expected latency=MS, errors=SHARE or crash=N")
            try:
                values[key] = float(raw)
            except ValueError:
                raise ConfigError(f"invalid fault value in {part!r}") from None
        if not 0 <= values.get("errors", 0.0) <= 1:
            raise ConfigError("errors is a share in [0, 1]")
        crash = values.get("crash")
        return cls(values.get("latency", 0.0), values.get("errors", 0.0), int(crash) if crash is not None else None)


class FaultInjector:
    def __init__(self, spec: FaultSpec, seed: int = 0, *, sleep: Callable[[float], None] = time.sleep,
                 exit: Callable[[int], None] = os._exit) -> None:
        self.spec = spec
        self._rng = np.random.default_rng(seed)
        self._sleep = sleep
        self._exit = exit
        self.count = 0

    def before_inference(self) -> None:
        self.count += 1
        if self.spec.crash_after is not None and self.count >= self.spec.crash_after:
            log.error("injected crash after %d inferences", self.count)
            self._exit(70)
        if self.spec.added_latency_ms > 0:
            self._sleep(self.spec.added_latency_ms / 1000.0)
        if self.spec.error_rate > 0 and self._rng.random() < self.spec.error_rate:
            raise InjectedFault(f"injected fault (error rate {self.spec.error_rate:.0%})")


class InputStream(Protocol):
    def next_batch(self) -> np.ndarray: ...


class _DriftingStream:
    def __init__(self, rows: np.ndarray, seed: int, drift: DriftSpec) -> None:
        self._rows = rows
        self._std = rows.std(axis=0)
        self._rng = np.random.default_rng(seed)
        self._drift = drift
        self._order = self._rng.permutation(len(rows))
        self._pos = 0
        self.served = 0

    def next_batch(self) -> np.ndarray:
        if self._pos == len(self._order):
            self._order = self._rng.permutation(len(self._rows))
            self._pos = 0
        row = self._rows[self._order[self._pos] : self._order[self._pos] + 1].astype(np.float32, copy=True)
        self._pos += 1
        self.served += 1
        return self._apply(row)

    def _apply(self, row: np.ndarray) -> np.ndarray:
        d = self._drift
        if d.kind == "none" or self.served <= d.start_after:
            return row
        cols = list(d.features) if d.features is not None else slice(None)
        scale = np.where(self._std > 0, self._std, 1.0)[cols]
        if d.kind == "shift":
            row[0, cols] += d.magnitude * scale
        elif d.kind == "noise":
            row[0, cols] += self._rng.standard_normal(np.shape(scale)) * d.magnitude * scale
        elif d.kind == "nan_burst" and self._rng.random() < d.magnitude:
            row[0, cols] = np.nan
        return row


class DigitsInputs(_DriftingStream):
    def __init__(self, seed: int = 0, drift: DriftSpec | None = None) -> None:
        from device_agent.inputs import digits_dataset

        x, _ = digits_dataset()
        super().__init__(x, seed, drift or DriftSpec())


class GaussianInputs(_DriftingStream):
    """Sensor-like readings: independent Gaussian features (a pool of 4,096 pre-drawn rows)."""

    def __init__(self, n_features: int = 8, seed: int = 0, drift: DriftSpec | None = None, mean: float = 0.0,
                 std: float = 1.0) -> None:
        rows = np.random.default_rng(seed + 10_000).normal(mean, std, size=(4096, n_features)).astype(np.float32)
        super().__init__(rows, seed, drift or DriftSpec())


def make_input_stream(source: str, seed: int, drift: DriftSpec, n_features: int | None = None) -> InputStream:
    if source == "digits":
        return DigitsInputs(seed, drift)
    if source == "gaussian":
        return GaussianInputs(n_features or 8, seed, drift)
    raise ConfigError(f"unknown input source {source!r}: digits or gaussian")
