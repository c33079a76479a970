"""The bundled digits data set, shared read-only by every simulated device in a process."""

from __future__ import annotations

import functools

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
