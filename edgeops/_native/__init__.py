"""The compiled core (built from ``native/*.pyx``), behind a guard with a useful error.

Importing this package checks that the extension modules exist, in the manner of scikit-learn's
``__check_build``: an installation without a C compiler, or a source checkout never built, fails
here with instructions instead of a bare ``ModuleNotFoundError`` deep inside the drift code.
"""

from __future__ import annotations

from pathlib import Path

from edgeops.errors import NativeBuildError

_HERE = Path(__file__).resolve().parent

try:
    from edgeops._native import _drift
except ImportError as exc:
    _built = sorted(p.name for p in _HERE.iterdir() if p.suffix in (".so", ".pyd"))
    raise NativeBuildError(
        "The EdgeOps compiled core (edgeops._native._drift) is not built or cannot be loaded: "
        f"{exc}.\nFound in {_HERE}: {', '.join(_built) or 'no compiled modules'}.\n"
        "Build it with a C compiler available: `make venv` in a source checkout, or "
        "`pip install -e .` (or `python setup.py build_ext --inplace` in an existing environment)."
    ) from exc

__all__ = ["_drift"]
