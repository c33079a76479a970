"""Declares the compiled core only; metadata lives in pyproject.toml.

Every ``native/*.pyx`` becomes ``edgeops._native.<name>``, compiled together with the plain C
kernels in ``native/src/*.c``. Set ``EDGEOPS_CYTHON_DEBUG=1`` at build time to turn bounds checking,
wraparound and initialised-check back on (the test suite runs once against such a build).

No flag targets the build machine's CPU (no -march=native): the C kernels carry their own AVX2
variant chosen at load time on x86-64 (function multiversioning), so one wheel runs everywhere,
including arm64 boards where NEON is baseline. -ffp-contract=off keeps every variant's rounding
identical (no fused multiply-add on one machine and not on another); -fno-trapping-math lets the
compiler turn the kernels' selects into vector blends (nothing reads floating-point exception flags).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("EDGEOPS_CYTHON_DEBUG", "") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": DEBUG,
    "embedsignature": True,
}

C_SOURCES = [str(p) for p in sorted(Path("native/src").glob("*.c"))]
C_FLAGS = ["-ffp-contract=off", "-fno-trapping-math"]

extensions = [
    Extension(
        f"edgeops._native.{pyx.stem}",
        [str(pyx), *C_SOURCES],
        include_dirs=["native/src"],
        depends=[str(p) for p in sorted(Path("native/src").glob("*.h"))],
        extra_compile_args=(["-O0", "-g"] if DEBUG else ["-O3"]) + C_FLAGS,
    )
    for pyx in sorted(Path("native").glob("*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        include_path=["native"],
        # A debug build must not reuse C files generated without the checks.
        force=DEBUG,
    ),
)
