"""Fixtures of the integration tests: a real broker (both kinds) and managed processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeops.bundle import Bundle, build_bundle
from edgeops.examples import TrainedExample
from tests.integration.harness import BrokerHandle, Processes

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

#: The system's Chromium (Debian's package); Playwright never downloads a browser here.
CHROMIUM = Path(os.environ.get("EDGEOPS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerHandle]:
    handle = BrokerHandle(request.param, tmp_path)
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[BrokerHandle]:
    """Mosquitto alone, for tests whose subject is the agent rather than the broker."""
    handle = BrokerHandle("mosquitto", tmp_path)
    handle.start()
    yield handle
    handle.stop()


@pytest.fixture
def bundles(digits: TrainedExample, digits_v2: TrainedExample, tmp_path: Path) -> tuple[Bundle, Bundle]:
    v1 = build_bundle(digits.model_path, tmp_path / "v1.zip", name="digits", version="1",
                      reference=digits.reference, chunk_size=4096)
    v2 = build_bundle(digits_v2.model_path, tmp_path / "v2.zip", name="digits", version="2",
                      reference=digits_v2.reference, chunk_size=4096)
    return v1, v2


@pytest.fixture(scope="session")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-input model with ~2 MB of weights: 128 transfer chunks at 16 KiB."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 8192)).astype(np.float32) * 0.01, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8192, 10)).astype(np.float32) * 0.01, "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["scores"])],
        "big", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, 10])], initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Headless Chromium with a fresh profile, driven by Playwright. A missing browser fails the
    test with how to install it (.ci/run does): it is never a skip."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it), "
                    "or point EDGEOPS_CHROMIUM at a Chromium binary", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def screenshots(artifacts_dir: Path) -> Path:
    """Where browser tests save screenshots: ``$EDGEOPS_TEST_ARTIFACTS`` or tests/test-artifacts (gitignored)."""
    root = Path(os.environ["EDGEOPS_TEST_ARTIFACTS"]) if os.environ.get("EDGEOPS_TEST_ARTIFACTS") else artifacts_dir
    path = root / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path
