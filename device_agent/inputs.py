"""Simulated input streams for devices without a real sensor or application."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from edgeops.errors import ConfigError


@functools.lru_cache(maxsize=1)
def digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 rows, 64 features); shipped with the package, no download.

    Loaded once per process (the simulator runs hundreds of devices) and returned read-only, since
    every caller shares the same arrays.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError("the digits input stream needs scikit-learn: pip install 'edgeops[sim]'") from exc
    data = load_digits()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


class DigitsStream:
    """Rows of the digits set in a per-seed shuffled order, forever, as (1, 64) float32 batches.

    Without drift; device_agent.simulation.DigitsInputs is the stream with injectable drift.
    """

    def __init__(self, seed: int = 0) -> None:
        self._x, _ = digits_dataset()
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for index in self._rng.permutation(len(self._x)):
                yield self._x[index : index + 1]
