"""Simulated input streams for devices without a real sensor or application."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgeops.errors import ConfigError


def digits_dataset() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1,797 rows, 64 features); shipped with the package, no download."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ConfigError("the digits input stream needs scikit-learn: pip install 'edgeops[sim]'") from exc
    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


class DigitsStream:
    """Rows of the digits set in a per-seed shuffled order, forever, as (1, 64) float32 batches."""

    def __init__(self, seed: int = 0) -> None:
        self._x, _ = digits_dataset()
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            for index in self._rng.permutation(len(self._x)):
                yield self._x[index : index + 1]
