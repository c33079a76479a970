"""Simulated inputs and faults: drift does what it says, seeds reproduce, faults are injectable."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from device_agent.inputs import digits_dataset
from device_agent.simulation import (
    CRASH_EXIT_CODE,
    DigitsInputs,
    DriftSpec,
    FaultInjector,
    FaultSpec,
    GaussianInputs,
    InputStream,
    make_input_stream,
)
from edgeops.errors import ConfigError, EdgeOpsError, InjectedFault


def take(stream: InputStream, n: int) -> np.ndarray:
    return np.concatenate([stream.next_batch() for _ in range(n)])


# --- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("none", DriftSpec()),
        ("  none ", DriftSpec()),
        ("shift:1.5@200", DriftSpec("shift", 1.5, 200)),
        ("shift:-2", DriftSpec("shift", -2.0)),
        ("noise:0.5", DriftSpec("noise", 0.5)),
        ("nan_burst:0.2", DriftSpec("nan_burst", 0.2)),
        ("nan_burst:1@5[0,3, 7]", DriftSpec("nan_burst", 1.0, 5, (0, 3, 7))),
        ("shift:1e-1[2]", DriftSpec("shift", 0.1, 0, (2,))),
    ],
)
def test_drift_spec_parses(text: str, spec: DriftSpec) -> None:
    assert DriftSpec.parse(text) == spec


@pytest.mark.parametrize(
    "text",
    ["", "drift", "shift", "shift:", "shift:abc", "shift:1.5@", "shift:1@-3", "noise:-1", "nan_burst:1.5",
     "none:1", "shift:nan", "shift:inf", "shift:1[]", "shift:1[1,1]", "shift:1[a]", "shift:1[1,,2]"],
)
def test_drift_spec_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError):
        DriftSpec.parse(text)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("", FaultSpec()),
        ("none", FaultSpec()),
        ("latency=5,errors=0.1,crash=1000", FaultSpec(5.0, 0.1, 1000)),
        ("errors=1", FaultSpec(error_rate=1.0)),
        (" crash = 3 ", FaultSpec(crash_after=3)),
    ],
)
def test_fault_spec_parses(text: str, spec: FaultSpec) -> None:
    assert FaultSpec.parse(text) == spec


@pytest.mark.parametrize(
    "text",
    ["latency", "latency=", "latency=-1", "errors=2", "errors=x", "crash=0", "crash=1.5", "boom=1",
     "latency=1,latency=2", "latency=nan", "latency=5,"],
)
def test_fault_spec_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError):
        FaultSpec.parse(text)


# --- streams -----------------------------------------------------------------------------------


def test_digits_rows_come_from_the_data_set_in_shuffled_order() -> None:
    x, _ = digits_dataset()
    rows = take(DigitsInputs(seed=3), len(x))
    assert rows.shape == (len(x), 64) and rows.dtype == np.float32
    # One pass is a permutation of the data set.
    assert np.array_equal(np.unique(rows, axis=0), np.unique(x, axis=0))
    assert not np.array_equal(rows, x)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    for make in (lambda s: DigitsInputs(s, DriftSpec("noise", 1.0)),
                 lambda s: GaussianInputs(5, s, DriftSpec("nan_burst", 0.3))):
        a, b, c = take(make(7), 300), take(make(7), 300), take(make(8), 300)
        assert np.array_equal(a, b, equal_nan=True)
        assert not np.array_equal(a, c, equal_nan=True)


def test_shift_moves_the_mean_by_magnitude_std_after_start() -> None:
    x, _ = digits_dataset()
    std = x.astype(np.float64).std(axis=0)
    base = take(DigitsInputs(seed=1), 800).astype(np.float64)
    drifted = take(DigitsInputs(seed=1, drift=DriftSpec("shift", 1.5, start_after=300)), 800).astype(np.float64)
    # Drift does not change which rows are served: the first 300 are identical ...
    assert np.array_equal(base[:300], drifted[:300])
    # ... and every later row is moved by exactly 1.5 std per feature (1.5 absolute for std-0 features).
    expected = 1.5 * np.where(std > 0, std, 1.0)
    np.testing.assert_allclose(drifted[300:] - base[300:], np.broadcast_to(expected, (500, 64)), atol=1e-4)
    assert (std == 0).any()  # the digits have constant pixels: the absolute-unit rule is exercised


def test_shift_on_chosen_features_only() -> None:
    base = take(GaussianInputs(6, seed=2), 2000).astype(np.float64)
    drifted = take(GaussianInputs(6, seed=2, drift=DriftSpec("shift", -2.0, features=(1, 4)), std=3.0), 2000)
    scaled_base = take(GaussianInputs(6, seed=2, std=3.0), 2000).astype(np.float64)
    delta = drifted - scaled_base
    np.testing.assert_allclose(delta[:, [1, 4]], -6.0, atol=1e-4)  # -2 std, std 3
    np.testing.assert_allclose(delta[:, [0, 2, 3, 5]], 0.0, atol=0)
    assert abs(base.mean()) < 0.1 and abs(base.std() - 1.0) < 0.05


def test_noise_raises_the_std() -> None:
    drift = DriftSpec("noise", 2.0, start_after=500)
    rows = take(GaussianInputs(4, seed=5, drift=drift), 4500).astype(np.float64)
    before, after = rows[:500].std(axis=0), rows[500:].std(axis=0)
    assert np.all(np.abs(before - 1.0) < 0.15)
    np.testing.assert_allclose(after, np.sqrt(1 + 2.0**2), rtol=0.06)
    assert abs(rows[500:].mean()) < 0.1  # noise is centred: the mean does not move


def test_nan_burst_gives_about_the_fraction_of_nan_rows() -> None:
    rows = take(DigitsInputs(seed=4, drift=DriftSpec("nan_burst", 0.2, start_after=100)), 3100)
    nan_rows = np.isnan(rows).any(axis=1)
    assert not nan_rows[:100].any()
    assert 0.17 < nan_rows[100:].mean() < 0.23
    assert np.isnan(rows[nan_rows]).all()  # all features: none were chosen


def test_nan_burst_on_chosen_features() -> None:
    rows = take(GaussianInputs(5, seed=6, drift=DriftSpec("nan_burst", 1.0, features=(0, 2))), 50)
    assert np.isnan(rows[:, [0, 2]]).all()
    assert not np.isnan(rows[:, [1, 3, 4]]).any()


def test_batches_are_fresh_float32_arrays() -> None:
    stream = DigitsInputs(seed=0)
    first = stream.next_batch()
    first[:] = -1  # the caller may scribble on its batch ...
    assert (digits_dataset()[0] >= 0).all()  # ... without touching the shared data set
    assert stream.next_batch().shape == (1, 64)


def test_make_input_stream() -> None:
    assert isinstance(make_input_stream("digits", 0, DriftSpec()), DigitsInputs)
    gaussian = make_input_stream("gaussian", 0, DriftSpec(), n_features=3)
    assert gaussian.next_batch().shape == (1, 3)
    assert make_input_stream("gaussian", 0, DriftSpec()).next_batch().shape == (1, 8)
    with pytest.raises(ConfigError):
        make_input_stream("camera", 0, DriftSpec())
    with pytest.raises(ConfigError):
        make_input_stream("digits", 0, DriftSpec(), n_features=10)
    with pytest.raises(ConfigError):
        make_input_stream("gaussian", 0, DriftSpec("shift", 1.0, features=(8,)))
    with pytest.raises(ConfigError):
        GaussianInputs(0)


# --- faults ------------------------------------------------------------------------------------


def test_error_rate_is_about_right_and_seeded() -> None:
    def failures(seed: int) -> list[int]:
        injector = FaultInjector(FaultSpec(error_rate=0.1), seed=seed)
        failed = []
        for i in range(2000):
            try:
                injector.before_inference()
            except InjectedFault:
                failed.append(i)
        assert injector.count == 2000
        return failed

    first = failures(11)
    assert 160 <= len(first) <= 240
    assert failures(11) == first
    assert failures(12) != first


def test_injected_fault_is_an_edgeops_error_with_a_code() -> None:
    injector = FaultInjector(FaultSpec(error_rate=1.0))
    with pytest.raises(InjectedFault) as info:
        injector.before_inference()
    assert isinstance(info.value, EdgeOpsError) and info.value.code == "injected_fault"


def test_latency_goes_through_the_injected_sleep() -> None:
    slept: list[float] = []
    injector = FaultInjector(FaultSpec(added_latency_ms=5.0), sleep=slept.append)
    for _ in range(3):
        injector.before_inference()
    assert slept == [0.005, 0.005, 0.005]
    quiet: list[float] = []
    FaultInjector(FaultSpec(), sleep=quiet.append).before_inference()
    assert quiet == []


def test_crash_exits_with_70_at_the_given_inference(caplog: pytest.LogCaptureFixture) -> None:
    exits: list[int] = []
    slept: list[float] = []
    injector = FaultInjector(FaultSpec(added_latency_ms=1.0, crash_after=3), sleep=slept.append, exit=exits.append)
    with caplog.at_level(logging.ERROR, logger="device_agent.simulation"):
        for _ in range(2):
            injector.before_inference()
        assert exits == []
        injector.before_inference()
    assert exits == [CRASH_EXIT_CODE] == [70]
    assert len(slept) == 2  # the crashing inference does not run on
    assert "injected crash" in caplog.text and "inference=3" in caplog.text


def test_fault_spec_active() -> None:
    assert not FaultSpec().active
    assert FaultSpec(error_rate=0.5).active and FaultSpec(crash_after=1).active
