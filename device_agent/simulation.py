"""Simulated devices' inputs and faults: seeded, reproducible, with injectable drift.

Input streams serve one row at a time as a ``(1, n_features)`` float32 batch. Drift starts after
``start_after`` rows and is measured in each feature's *reference* standard deviation (digits: the
per-feature std of the whole data set; Gaussian: the ``std`` the stream was made with). A constant
feature (std 0, e.g. the digits' always-blank corner pixels) is shifted or noised by ``magnitude``
in absolute units instead, so a drift on it is still visible.

Each stream uses two generators spawned from its seed: one for the row order (or values), one for
the drift. The undrifted part of the data is therefore the same row for row whatever drift is
injected, and the same seed gives the same stream.

Faults make a version look bad on purpose (added latency, failed inferences, a crash) so rollout
gates and local rollback can be exercised against real processes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from edgeops.errors import ConfigError, InjectedFault

log = logging.getLogger(__name__)

__all__ = [
    "CRASH_EXIT_CODE",
    "DigitsInputs",
    "DriftSpec",
    "FaultInjector",
    "FaultSpec",
    "GaussianInputs",
    "InjectedFault",
    "InputStream",
    "make_input_stream",
]

DriftKind = Literal["none", "shift", "noise", "nan_burst"]
#: Exit status of an injected crash (EX_SOFTWARE): tells a supervisor's log it was on purpose.
CRASH_EXIT_CODE = 70
_DRIFT_RE = re.compile(
    r"(?P<kind>none|shift|noise|nan_burst)(?::(?P<magnitude>[^@\[\]]+))?(?:@(?P<start>\d+))?"
    r"(?:\[(?P<features>[0-9,\s]*)\])?"
)
_GAUSSIAN_BLOCK_ROWS = 256


@dataclass(frozen=True)
class DriftSpec:
    """What drift to inject into a simulated input stream.

    Text form (``simulate_drift`` in the agent config): ``KIND[:MAGNITUDE][@START_ROW][[F1,F2,...]]``,
    e.g. ``none``, ``shift:1.5@200``, ``noise:2``, ``nan_burst:0.2@50[0,5]``.
    """

    kind: DriftKind = "none"
    #: shift: mean shift in reference std units (may be negative); noise: std of the added Gaussian
    #: noise in reference std units (the feature std becomes ``std * sqrt(1 + magnitude**2)``);
    #: nan_burst: share of rows whose drifted features are NaN, in [0, 1].
    magnitude: float = 0.0
    #: Rows served undrifted before the drift starts.
    start_after: int = 0
    #: Drifted feature indices; None = all.
    features: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("none", "shift", "noise", "nan_burst"):
            raise ConfigError(f"unknown drift kind {self.kind!r}: none, shift, noise or nan_burst")
        if not math.isfinite(self.magnitude):
            raise ConfigError("drift magnitude must be a finite number")
        if self.kind == "noise" and self.magnitude < 0:
            raise ConfigError("noise magnitude is a standard deviation: it must not be negative")
        if self.kind == "nan_burst" and not 0 <= self.magnitude <= 1:
            raise ConfigError("nan_burst magnitude is a share of rows in [0, 1]")
        if self.start_after < 0:
            raise ConfigError("drift start_after must not be negative")
        if self.features is not None and (
            not self.features or min(self.features) < 0 or len(set(self.features)) != len(self.features)
        ):
            raise ConfigError("drift features must be distinct non-negative indices")

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """Parse the text form; ConfigError says what is wrong and what is expected."""
        expected = "expected KIND[:MAGNITUDE][@START_ROW][[F1,F2,...]], KIND one of none, shift, noise, nan_burst"
        match = _DRIFT_RE.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"invalid drift {text!r}: {expected}")
        kind, magnitude, start, features = match.group("kind", "magnitude", "start", "features")
        if kind == "none":
            if magnitude or start or features is not None:
                raise ConfigError(f"invalid drift {text!r}: 'none' takes no magnitude, start or features")
            return cls()
        if magnitude is None:
            raise ConfigError(f"invalid drift {text!r}: {kind} needs a magnitude, e.g. {kind}:0.5")
        try:
            value = float(magnitude)
        except ValueError:
            raise ConfigError(f"invalid drift magnitude {magnitude!r} in {text!r}") from None
        indices: tuple[int, ...] | None = None
        if features is not None:
            parts = [p.strip() for p in features.split(",")]
            if not all(parts):
                raise ConfigError(f"invalid drift features in {text!r}: expected [F1,F2,...] of indices")
            indices = tuple(int(p) for p in parts)
        return cls(kind, value, int(start or 0), indices)  # type: ignore[arg-type]


@dataclass(frozen=True)
class FaultSpec:
    """Faults injected into every inference. Text form: ``latency=5,errors=0.1,crash=1000`` (any subset)."""

    #: Sleep added before each inference, in ms.
    added_latency_ms: float = 0.0
    #: Share of inferences that fail with InjectedFault, in [0, 1].
    error_rate: float = 0.0
    #: The process exits (``os._exit(70)``) at this inference; None = never.
    crash_after: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.added_latency_ms) and self.added_latency_ms >= 0):
            raise ConfigError("added latency must be a non-negative number of ms")
        if not 0 <= self.error_rate <= 1:
            raise ConfigError("error rate is a share in [0, 1]")
        if self.crash_after is not None and self.crash_after < 1:
            raise ConfigError("crash_after counts inferences: it must be at least 1")

    @property
    def active(self) -> bool:
        return self.added_latency_ms > 0 or self.error_rate > 0 or self.crash_after is not None

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``latency=MS``, ``errors=SHARE``, ``crash=N``, comma-separated; ``""`` or ``none`` = no faults."""
        if text.strip() in ("", "none"):
            return cls()
        latency, errors, crash = 0.0, 0.0, None
        seen: set[str] = set()
        for part in (p.strip() for p in text.split(",")):
            key, sep, raw = (s.strip() for s in part.partition("="))
            if not sep or key not in ("latency", "errors", "crash"):
                raise ConfigError(f"invalid fault {part!r} in {text!r}: expected latency=MS, errors=SHARE or crash=N")
            if key in seen:
                raise ConfigError(f"fault {key!r} given twice in {text!r}")
            seen.add(key)
            try:
                if key == "crash":
                    crash = int(raw)
                elif key == "latency":
                    latency = float(raw)
                else:
                    errors = float(raw)
            except ValueError:
                kind = "an integer" if key == "crash" else "a number"
                raise ConfigError(f"invalid fault value in {part!r}: {kind} is expected") from None
        return cls(latency, errors, crash)


class FaultInjector:
    """Applies a FaultSpec before each inference; seeded, so the same seed fails the same calls.

    ``sleep`` and ``exit`` are injectable so tests neither wait nor die. The crash uses
    ``os._exit``: no clean-up, no ``offline`` message, no flushing of state; exactly what a
    segfaulting runtime or the OOM killer does to a real agent, which is what the crash tests want.
    Log handlers are flushed first so the reason is in the log.
    """

    def __init__(self, spec: FaultSpec, seed: int = 0, *, sleep: Callable[[float], None] = time.sleep,
                 exit: Callable[[int], object] = os._exit) -> None:
        self.spec = spec
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA17]))
        self._sleep = sleep
        self._exit = exit
        self._count = 0

    @property
    def count(self) -> int:
        """Inferences seen so far (including failed ones)."""
        return self._count

    def before_inference(self) -> None:
        """Sleep, fail (InjectedFault) or exit the process, as the spec says."""
        self._count += 1
        spec = self.spec
        if spec.crash_after is not None and self._count == spec.crash_after:
            log.error("injected crash: exiting inference=%d exit_code=%d", self._count, CRASH_EXIT_CODE)
            _flush_logs()
            self._exit(CRASH_EXIT_CODE)
            return
        if spec.added_latency_ms > 0:
            self._sleep(spec.added_latency_ms / 1000.0)
        if spec.error_rate > 0 and self._rng.random() < spec.error_rate:
            raise InjectedFault(f"injected fault at inference {self._count} (error rate {spec.error_rate:g})")


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


class InputStream(Protocol):
    def next_batch(self) -> np.ndarray:
        """The next row as a fresh ``(1, n_features)`` float32 array."""
        ...


class _DriftingStream:
    """Applies a DriftSpec to the rows a subclass produces (``_next_row``)."""

    def __init__(self, n_features: int, reference_std: np.ndarray, seed: int, drift: DriftSpec) -> None:
        if drift.features is not None and max(drift.features) >= n_features:
            raise ConfigError(f"drift feature {max(drift.features)} is out of range: the stream has "
                              f"{n_features} features")
        self.n_features = n_features
        self.drift = drift
        #: Per-feature std that drift magnitudes are measured in (the std-0 features count as 1).
        self.reference_std = np.asarray(reference_std, dtype=np.float64)
        self._scale = np.where(self.reference_std > 0, self.reference_std, 1.0)
        self._cols: slice | list[int] = list(drift.features) if drift.features is not None else slice(None)
        data_seq, drift_seq = np.random.SeedSequence(seed).spawn(2)
        self._data_rng = np.random.default_rng(data_seq)
        self._drift_rng = np.random.default_rng(drift_seq)
        #: Rows served so far.
        self.served = 0

    def _next_row(self) -> np.ndarray:
        raise NotImplementedError

    def next_batch(self) -> np.ndarray:
        row = self._next_row().astype(np.float64).reshape(1, self.n_features)
        self.served += 1
        d = self.drift
        if d.kind != "none" and self.served > d.start_after:
            cols = self._cols
            if d.kind == "shift":
                row[0, cols] += d.magnitude * self._scale[cols]
            elif d.kind == "noise":
                scale = self._scale[cols]
                row[0, cols] += self._drift_rng.standard_normal(np.shape(scale)) * (d.magnitude * scale)
            elif self._drift_rng.random() < d.magnitude:  # nan_burst
                row[0, cols] = np.nan
        return row.astype(np.float32)


class DigitsInputs(_DriftingStream):
    """Rows of scikit-learn's bundled digits (64 pixel features, 0..16) in a per-seed shuffled order, forever."""

    def __init__(self, seed: int = 0, drift: DriftSpec | None = None) -> None:
        from device_agent.inputs import digits_dataset

        x, _ = digits_dataset()
        self._rows = x
        super().__init__(x.shape[1], x.astype(np.float64).std(axis=0), seed, drift or DriftSpec())
        self._order = self._data_rng.permutation(len(x))
        self._pos = 0

    def _next_row(self) -> np.ndarray:
        if self._pos == len(self._order):
            self._order = self._data_rng.permutation(len(self._rows))
            self._pos = 0
        row: np.ndarray = self._rows[self._order[self._pos]]
        self._pos += 1
        return row


class GaussianInputs(_DriftingStream):
    """Sensor-like readings: independent Gaussian features N(mean, std), drawn in blocks."""

    def __init__(self, n_features: int = 8, seed: int = 0, drift: DriftSpec | None = None, mean: float = 0.0,
                 std: float = 1.0) -> None:
        if n_features < 1:
            raise ConfigError("a Gaussian input stream needs at least one feature")
        if not (math.isfinite(std) and std >= 0 and math.isfinite(mean)):
            raise ConfigError("Gaussian inputs need a finite mean and a non-negative finite std")
        super().__init__(n_features, np.full(n_features, std), seed, drift or DriftSpec())
        self.mean = mean
        self.std = std
        self._block = np.empty((0, n_features))
        self._pos = 0

    def _next_row(self) -> np.ndarray:
        if self._pos == len(self._block):
            self._block = self._data_rng.normal(self.mean, self.std, size=(_GAUSSIAN_BLOCK_ROWS, self.n_features))
            self._pos = 0
        row: np.ndarray = self._block[self._pos]
        self._pos += 1
        return row


def make_input_stream(source: str, seed: int, drift: DriftSpec, n_features: int | None = None) -> InputStream:
    """``digits`` (64 features; ``n_features`` must be None or 64) or ``gaussian`` (``n_features``, default 8)."""
    if source == "digits":
        if n_features not in (None, 64):
            raise ConfigError(f"the digits stream has 64 features, not {n_features}")
        return DigitsInputs(seed, drift)
    if source == "gaussian":
        return GaussianInputs(8 if n_features is None else n_features, seed, drift)
    raise ConfigError(f"unknown input source {source!r}: digits or gaussian")
