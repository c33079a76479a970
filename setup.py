"""Declares the compiled core only; metadata lives in pyproject.toml.

Every ``native/*.pyx`` becomes ``edgeops._native.<name>``. Set ``EDGEOPS_CYTHON_DEBUG=1`` at build
time to turn bounds checking, wraparound and initialised-check back on (the test suite runs once
against such a build).
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

extensions = [
    Extension(
        f"edgeops._native.{pyx.stem}",
        [str(pyx)],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O3"],
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
