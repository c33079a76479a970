"""Fixtures shared by unit and integration tests: a real digits model made in code."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.examples import TrainedExample, train_digits_mlp


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """The digits MLP exported to ONNX, trained once per test session."""
    return train_digits_mlp(tmp_path_factory.mktemp("models") / "digits.onnx")


@pytest.fixture(scope="session")
def digits_v2(tmp_path_factory: pytest.TempPathFactory) -> TrainedExample:
    """A second, different digits model (other hidden size): a new version of the same model."""
    return train_digits_mlp(tmp_path_factory.mktemp("models2") / "digits.onnx", hidden=24, seed=1)


@pytest.fixture
def artifacts_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path
