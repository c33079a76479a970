"""The compiled core: which build is loaded, and whether it checks bounds.

``make test-debug-build`` compiles native/ with EDGEOPS_CYTHON_DEBUG=1 into build/debug and runs
the drift tests against it with EDGEOPS_EXPECT_DEBUG_BUILD=1; the normal run uses the optimised
build, where the same out-of-bounds read is not checked.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeops._native import _drift
from edgeops.drift import DriftMonitor, ReferenceProfile

DEBUG_EXPECTED = os.environ.get("EDGEOPS_EXPECT_DEBUG_BUILD") == "1"


def test_loaded_build_is_the_expected_one() -> None:
    path = Path(_drift.__file__).resolve().as_posix()
    if DEBUG_EXPECTED:
        assert "/build/debug/edgeops/_native/" in path, path
    else:
        assert "/build/debug/" not in path, path
    assert Path(__file__).resolve().parents[2].joinpath("tests").is_dir()


def test_out_of_bounds_raises_only_in_debug_build() -> None:
    buf = np.arange(8, dtype=np.float64)
    view = buf[2:4]
    assert _drift._probe_index(view, 1) == 3.0
    if DEBUG_EXPECTED:
        assert _drift.bounds_checked()
        with pytest.raises(IndexError):
            _drift._probe_index(view, 3)
        with pytest.raises(IndexError):
            _drift._probe_index(view, -3)
    else:
        assert not _drift.bounds_checked()
        assert _drift._probe_index(view, 3) == 5.0  # unchecked read of buf[5]


def test_kernel_variant_matches_the_cpu() -> None:
    # One binary for every machine: the AVX2 variant of the fold kernels is picked at load time on
    # x86-64 CPUs that have AVX2, the baseline one elsewhere; other platforms build one portable
    # variant (NEON is baseline on arm64).
    isa = _drift.kernel_isa()
    assert isa in ("avx2", "default", "portable")
    if platform.machine() == "x86_64" and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        flags = Path("/proc/cpuinfo").read_text().split()
        assert isa == ("avx2" if "avx2" in flags else "default")


def test_monitor_runs_on_this_build() -> None:
    X = np.random.default_rng(0).normal(size=(2000, 5))
    mon = DriftMonitor(ReferenceProfile.fit(X))
    mon.update(X.astype(np.float32))
    mon.update(X[:1])
    assert mon.report().drifted_features == []


def test_guard_message_names_the_fix() -> None:
    import importlib
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'edgeops._native._drift':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import edgeops.drift\n"
        "except ImportError as e:\n"
        "    from edgeops.errors import NativeBuildError\n"
        "    assert isinstance(e, NativeBuildError), type(e)\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ}, check=True)
    assert "make venv" in out.stdout and "pip install -e ." in out.stdout
    importlib.import_module("edgeops._native")
