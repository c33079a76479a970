"""/metrics formatting: names, labels and values in the Prometheus text format, and the bound on
per-device label cardinality (checked by parsing the output with prometheus_client's own parser)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeops.protocol import Presence, Status, Telemetry
from fleet_server import metrics
from fleet_server.rollout import Rollout, RolloutState, Stage
from fleet_server.store import DeviceRow, Store

TARGET = "t" * 64
OLD = "o" * 64


def device(device_id: str, *, online: bool = True, phase: str | None = "committed", version: str | None = "1",
           digest: str | None = OLD, p95: float | None = 2.0, drift: float | None = 0.1) -> DeviceRow:
    telemetry: dict[str, Any] | None = None
    if p95 is not None or drift is not None:
        telemetry = {"latency_ms_p95": p95, "drift_score": drift, "inferences": 10}
    return DeviceRow(fleet="f", device_id=device_id, online=online, agent_version="0.1.0", first_seen_ms=0,
                     last_seen_ms=0, active_name="digits" if version else None, active_version=version,
                     active_digest=digest if version else None, phase=phase, last_error=None,
                     last_telemetry=telemetry, last_telemetry_ms=1 if telemetry else None)


def sample(devices: list[DeviceRow], **kw: Any) -> metrics.FleetSample:
    base: dict[str, Any] = {"fleet": "f", "devices": devices,
                            "rollout_states": {s.value: 0 for s in RolloutState}, "live_rollouts": [],
                            "ingest": metrics.IngestSnapshot()}
    return metrics.FleetSample(**{**base, **kw})


def scrape(s: metrics.FleetSample, max_devices: int = 100) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Rendered text parsed back: {sample name: {sorted labels (without fleet): value}}."""
    text = metrics.render(metrics.fleet_metrics(s, max_devices)).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            assert smp.labels.pop("fleet") == "f"
            out.setdefault(smp.name, {})[tuple(sorted(smp.labels.items()))] = smp.value
    return out


def test_devices_by_presence_phase_and_version() -> None:
    rows = [device("a"), device("b", online=False, version="2", digest=TARGET, phase="probation"),
            device("c", version=None, phase=None, p95=None, drift=None), device("d", phase="rebooting")]
    got = scrape(sample(rows))
    assert got["edgeops_devices"] == {(("state", "online"),): 3, (("state", "offline"),): 1}
    phases = {labels[0][1]: v for labels, v in got["edgeops_devices_by_phase"].items()}
    # Every known phase is present (zeros included) so dashboards and alerts see a series; an unknown
    # phase from a newer agent gets its own.
    assert phases["committed"] == 1 and phases["probation"] == 1 and phases["none"] == 1 and phases["idle"] == 0
    assert phases["rebooting"] == 1 and set(phases) >= {"fetching", "verifying", "staged", "activating", "failed"}
    versions = {labels[0][1]: v for labels, v in got["edgeops_devices_by_version"].items()}
    assert versions == {"digits:1": 2, "digits:2": 1, "none": 1}
    assert got["edgeops_build_info"] == {(("version", metrics.__version__),): 1}


def test_per_device_gauges_are_capped_and_the_rest_folded_into_their_maximum() -> None:
    rows = [device(f"dev-{i:02d}", p95=float(i), drift=i / 100) for i in range(10)]
    rows.append(device("dev-99", p95=None, drift=None))  # no telemetry: no sample, but counted as folded
    got = scrape(sample(list(reversed(rows))), max_devices=3)
    p95 = {labels[0][1]: v for labels, v in got["edgeops_device_latency_ms_p95"].items()}
    # The first device ids own a series (stable across scrapes); the rest is one "_other" series with their max.
    assert p95 == {"dev-00": 0.0, "dev-01": 1.0, "dev-02": 2.0, "_other": 9.0}
    drift = {labels[0][1]: v for labels, v in got["edgeops_device_drift_score"].items()}
    assert drift == pytest.approx({"dev-00": 0.0, "dev-01": 0.01, "dev-02": 0.02, "_other": 0.09})
    assert got["edgeops_device_series_folded"] == {(): 8}


def test_cardinality_stays_bounded_however_large_the_fleet() -> None:
    rows = [device(f"dev-{i:05d}", version=str(i % 120)) for i in range(5000)]
    got = scrape(sample(rows), max_devices=25)
    assert len(got["edgeops_device_latency_ms_p95"]) == 26 and len(got["edgeops_device_drift_score"]) == 26
    versions = {labels[0][1]: v for labels, v in got["edgeops_devices_by_version"].items()}
    assert len(versions) == metrics.MAX_VERSIONS + 1 and sum(versions.values()) == 5000
    assert versions["_other"] == 5000 - sum(v for k, v in versions.items() if k != "_other")
    # No per-device series at all is a valid setting: everything folds.
    none = scrape(sample(rows), max_devices=0)
    assert set(none["edgeops_device_latency_ms_p95"]) == {(("device", "_other"),)}
    assert none["edgeops_device_series_folded"] == {(): 5000}
    with pytest.raises(ValueError, match="max_devices"):
        metrics.fleet_metrics(sample(rows), max_devices=-1)


def test_rollouts_by_state_and_live_rollout_progress() -> None:
    stages = (Stage("canary", count=1), Stage("all", percent=100))
    live = Rollout(id="r-1", target_digest=TARGET, stages=stages, state=RolloutState.RUNNING, stage_index=1,
                   assigned={"a": 0, "b": 1, "c": 1})
    rows = [device("a", version="2", digest=TARGET), device("b", version="2", digest=TARGET, phase="probation"),
            device("c")]
    states = {s.value: 0 for s in RolloutState} | {"running": 1, "succeeded": 4}
    got = scrape(sample(rows, rollout_states=states, live_rollouts=[live]))
    by_state = {labels[0][1]: v for labels, v in got["edgeops_rollouts"].items()}
    assert by_state["running"] == 1 and by_state["succeeded"] == 4 and by_state["rolled_back"] == 0
    assert got["edgeops_rollout_info"] == {(("rollout", "r-1"), ("stage", "all"), ("state", "running")): 1}
    assert got["edgeops_rollout_stage"] == {(("rollout", "r-1"),): 2}
    assert got["edgeops_rollout_stages"] == {(("rollout", "r-1"),): 2}
    assert got["edgeops_rollout_devices"] == {(("rollout", "r-1"), ("status", "assigned")): 3,
                                              (("rollout", "r-1"), ("status", "committed")): 1}


def test_ingestion_counters_and_live_streams() -> None:
    counters = metrics.IngestCounters()

    def ingest() -> None:
        for _ in range(1000):
            counters.count_windows(2, 1)
            counters.count_invalid()
            counters.count_received("telemetry")

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = scrape(sample([], ingest=counters.snapshot(), live_subscribers=2, live_dropped=5))
    assert got["edgeops_telemetry_windows_stored_total"] == {(): 8000}
    assert got["edgeops_telemetry_windows_duplicate_total"] == {(): 4000}
    assert got["edgeops_messages_invalid_total"] == {(): 4000}
    assert got["edgeops_messages_received_total"] == {(("channel", "telemetry"),): 4000}
    assert got["edgeops_live_subscribers"] == {(): 2}
    assert got["edgeops_live_subscribers_dropped_total"] == {(): 5}


def test_the_text_format_has_help_and_type_lines_and_escapes_label_values() -> None:
    rows = [device("a", version='we"ird\\v')]
    text = metrics.render(metrics.fleet_metrics(sample(rows))).decode()
    assert "# TYPE edgeops_devices gauge" in text and "# TYPE edgeops_telemetry_windows_stored_total counter" in text
    assert "# HELP edgeops_device_latency_ms_p95 " in text
    assert 'version="digits:we\\"ird\\\\v"' in text
    assert metrics.CONTENT_TYPE.startswith("text/plain")


def test_gather_reads_a_real_store(tmp_path: Path) -> None:
    from fleet_server.rollout import Gates
    from fleet_server.rollout_driver import RolloutService

    store = Store(tmp_path / "edgeops.db")
    try:
        store.record_status("f", Status(device_id="a", state=Presence.ONLINE, ts=1), 1)
        store.record_telemetry("f", Telemetry(device_id="a", window_id="a:b:1", ts=5, window_s=1.0,
                                              inferences=3, latency_ms_p95=4.5, drift_score=0.25), 5)
        RolloutService(store, "f").start_new(TARGET, "all", "canary:1", Gates(), actor="test")
        counters = metrics.IngestCounters()
        counters.count_windows(1, 0)
        got = scrape(metrics.gather(store, "f", counters))
        assert got["edgeops_devices"][(("state", "online"),)] == 1
        assert got["edgeops_device_latency_ms_p95"] == {(("device", "a"),): 4.5}
        assert got["edgeops_device_drift_score"] == {(("device", "a"),): 0.25}
        assert {k[0][1]: v for k, v in got["edgeops_rollouts"].items()}["running"] == 1
        assert len(got["edgeops_rollout_info"]) == 1
        assert got["edgeops_telemetry_windows_stored_total"] == {(): 1}
        # Nothing deployed yet (the rollout has not assigned anyone): every device is unmanaged.
        sync = {k[0][1]: v for k, v in got["edgeops_devices_by_sync"].items()}
        assert sync["unmanaged"] == 1 and sum(sync.values()) == 1 and set(sync) >= {"stalled", "fell_back"}
        store.add_deployment("f", TARGET, "all")
        sync = {k[0][1]: v for k, v in scrape(metrics.gather(store, "f", counters))["edgeops_devices_by_sync"].items()}
        assert sync["pending"] == 1 and sync["unmanaged"] == 0
    finally:
        store.close()
