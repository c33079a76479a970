"""The store on both backends (an SQLite file and a real PostgreSQL database): every public method,
duplicate windows, tags, retention, migrations, and SQLite shared by concurrent processes' connections."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import fleet_server.store as store_module
from edgeops.errors import ConfigError, NotFoundError
from edgeops.protocol import (
    BundleRef,
    DriftDetail,
    ErrorInfo,
    Event,
    EventKind,
    Presence,
    Reported,
    Status,
    Telemetry,
    UpdatePhase,
)
from fleet_server import migrations
from fleet_server.store import ModelRow, Store, StoreUnavailableError, metadata
from tests.conftest import StoreBackend

DIGEST_1 = "1" * 64
DIGEST_2 = "2" * 64
DIGEST_3 = "3" * 64


@pytest.fixture
def store(store_backend: StoreBackend, tmp_path: Path) -> Iterator[Store]:
    opened = Store(store_backend.target(tmp_path))
    yield opened
    opened.close()


def model_row(version: str, digest: str, parent: str | None = None, created_at: str = "2024-01-01T00:00:00Z",
              name: str = "digits") -> ModelRow:
    return ModelRow(name=name, version=version, digest=digest, runtime="onnxruntime", size_bytes=1234,
                    created_at=created_at, parent_version=None, parent_digest=parent, created_by="alice",
                    source_sha256="a" * 64, recipe_json='{"quantize":"int8"}', signed_by="0123456789abcdef")


def window(device: str, n: int, ts: int, **values: object) -> Telemetry:
    return Telemetry(device_id=device, window_id=f"{device}:w:{n}", ts=ts, window_s=1.0, model="digits",
                     model_version="1", inferences=10 + n, **values)  # type: ignore[arg-type]


def status(device: str, state: Presence = Presence.ONLINE, agent: str = "0.1.0") -> Status:
    return Status(device_id=device, state=state, ts=1, agent_version=agent)


# --- models, deployments, rollouts, audit ---------------------------------------------------------


def test_models_are_immutable_versions_with_lineage(store: Store) -> None:
    assert store.add_model(model_row("1", DIGEST_1), '{"v": 1}')
    assert not store.add_model(model_row("1", DIGEST_1), '{"v": 1}')  # the same bundle again
    with pytest.raises(ConfigError, match="already exists with different content"):
        store.add_model(model_row("1", DIGEST_2), "{}")
    assert store.add_model(model_row("2", DIGEST_2, parent=DIGEST_1, created_at="2024-02-01T00:00:00Z"), "{}")
    assert store.add_model(model_row("3", DIGEST_3, parent=DIGEST_2, created_at="2024-03-01T00:00:00Z"), "{}")
    assert store.add_model(model_row("1", "4" * 64, name="Zeta"), "{}")

    # Byte order on both backends: upper case before lower case.
    assert [m.label for m in store.models()] == ["Zeta:1", "digits:1", "digits:2", "digits:3"]
    assert store.model("digits", "2") == model_row("2", DIGEST_2, parent=DIGEST_1, created_at="2024-02-01T00:00:00Z")
    assert store.model_by_digest(DIGEST_3).version == "3"
    assert store.manifest_json("digits", "1") == '{"v": 1}'
    assert store.find_model("digits", "9") is None
    assert [m.version for m in store.lineage("digits", "3")] == ["3", "2", "1"]
    with pytest.raises(NotFoundError, match="known versions: 1, 2, 3"):
        store.model("digits", "9")
    with pytest.raises(NotFoundError, match="no such model"):
        store.model("other", "1")
    with pytest.raises(NotFoundError):
        store.model_by_digest("f" * 64)
    with pytest.raises(NotFoundError):
        store.manifest_json("digits", "9")


def test_deployments_and_what_each_device_should_run(store: Store) -> None:
    store.record_status("f", status("dev-a"), 1_000)
    store.record_status("f", status("dev-b"), 1_000)
    first = store.add_deployment("f", DIGEST_1, "all")
    second = store.add_deployment("f", DIGEST_2, "dev-b,dev-new", rollout_id="r-1", rollback=True)
    store.add_deployment("other", DIGEST_3, "all")
    assert second.id > first.id
    assert store.deployments("f") == [first, second]
    assert store.deployments("f")[1].rollback is True and store.deployments("f")[0].rollback is False
    desired = store.desired_for("f")
    # dev-new was never seen: an explicit id still gets its desired state (it may connect later).
    assert {d: dep.digest for d, dep in desired.items()} == {"dev-a": DIGEST_1, "dev-b": DIGEST_2,
                                                            "dev-new": DIGEST_2}
    assert desired["dev-b"].rollout_id == "r-1"


def test_rollout_records_update_optimistically(store: Store) -> None:
    store.create_rollout("f", "r-1", DIGEST_1, "running", '{"n": 1}')
    store.create_rollout("f", "r-2", DIGEST_2, "paused", '{"n": 2}')
    store.create_rollout("g", "r-3", DIGEST_2, "running", "{}")
    with pytest.raises(ConfigError, match="exists already"):
        store.create_rollout("f", "r-1", DIGEST_1, "running", "{}")
    record, revision = store.rollout_record("r-1")
    assert (record, revision) == ('{"n": 1}', 1)
    assert store.update_rollout("r-1", revision, "paused", '{"n": 10}')
    assert not store.update_rollout("r-1", revision, "running", '{"n": 11}')  # someone wrote meanwhile
    assert store.rollout_record("r-1") == ('{"n": 10}', 2)
    assert store.rollout_ids("f") == ["r-1", "r-2"]
    assert store.rollout_ids("f", ("paused",)) == ["r-1", "r-2"]
    assert store.rollout_ids("f", ("running",)) == []
    assert store.rollout_created_ms("r-2") > 0
    with pytest.raises(NotFoundError):
        store.rollout_record("r-9")
    with pytest.raises(NotFoundError):
        store.rollout_created_ms("r-9")


def test_audit_log_newest_first(store: Store) -> None:
    for i in range(5):
        store.audit("alice", "deploy", f"deployment-{i % 2}", reason=f"why {i}", details=f'{{"i": {i}}}')
    log = store.audit_log()
    assert [a["reason"] for a in log] == ["why 4", "why 3", "why 2", "why 1", "why 0"]
    assert set(log[0]) == {"id", "ts_ms", "actor", "action", "target", "reason", "details"}
    assert [a["details"] for a in store.audit_log(limit=2)] == ['{"i": 4}', '{"i": 3}']
    assert [a["reason"] for a in store.audit_log(target="deployment-1")] == ["why 3", "why 1"]


# --- devices, telemetry, drift, events ------------------------------------------------------------


def test_devices_are_what_they_reported(store: Store) -> None:
    store.record_status("f", status("dev-b", agent="0.2.0"), 2_000)
    store.record_status("f", status("dev-a"), 1_000)
    active = BundleRef(name="digits", version="2", digest=DIGEST_2)
    store.record_reported("f", Reported(device_id="dev-a", ts=1, phase=UpdatePhase.FAILED, active=active,
                                        last_error=ErrorInfo(code="smoke_test_failed", message="bad outputs")), 3_000)
    store.record_status("f", status("dev-a", Presence.OFFLINE), 2_500)  # arrives late: last_seen stays

    assert [d.device_id for d in store.devices("f")] == ["dev-a", "dev-b"]
    assert store.devices("other") == []
    dev_a = store.device("f", "dev-a")
    assert not dev_a.online and dev_a.agent_version == "0.1.0"
    assert (dev_a.first_seen_ms, dev_a.last_seen_ms) == (1_000, 3_000)
    assert dev_a.active_label == "digits:2" and dev_a.active_digest == DIGEST_2 and dev_a.phase == "failed"
    assert dev_a.last_error == "smoke_test_failed: bad outputs"
    assert dev_a.last_telemetry is None and dev_a.last_telemetry_ms is None and dev_a.tags == ()
    dev_b = store.device("f", "dev-b")
    assert dev_b.online and dev_b.agent_version == "0.2.0" and dev_b.active_label is None
    with pytest.raises(NotFoundError, match="dev-z"):
        store.device("f", "dev-z")


@pytest.mark.parametrize(("min_inferences", "target_windows", "baseline_windows"), [(4, 5, 5), (20, 6, 7)])
def test_gate_figures_read_enough_windows_of_each_version(store: Store, min_inferences: int, target_windows: int,
                                                          baseline_windows: int) -> None:
    """Five windows per version at least, more while they hold fewer than min_inferences."""
    from fleet_server.rollout import Gates, Rollout, RolloutState, Stage
    from fleet_server.rollout_driver import RolloutService

    store.add_model(model_row("1", DIGEST_1), "{}")
    store.add_model(model_row("2", DIGEST_2, created_at="2024-02-01T00:00:00Z"), "{}")
    store.record_reported("f", Reported(device_id="dev-a", ts=1, phase=UpdatePhase.COMMITTED,
                                        active=BundleRef(name="digits", version="2", digest=DIGEST_2)), 1)
    windows = [Telemetry(device_id="dev-a", window_id=f"dev-a:v1:{i}", ts=1_000 + i, window_s=1.0, model="digits",
                         model_version="1", inferences=3, latency_ms_p95=1.0 + i / 100) for i in range(8)]
    # On version 2, newest last: one slow window among fast ones, one failed inference.
    windows += [Telemetry(device_id="dev-a", window_id=f"dev-a:v2:{i}", ts=2_000 + i, window_s=1.0, model="digits",
                          model_version="2", inferences=2, errors=1 if i == 5 else 0,
                          latency_ms_p95=9.0 if i == 4 else 2.0) for i in range(6)]
    store.record_telemetry_batch("f", windows, 3_000)
    gates = Gates(min_inferences=min_inferences)
    rollout = Rollout(id="r-1", target_digest=DIGEST_2, stages=(Stage("all", percent=100, gates=gates),),
                      state=RolloutState.RUNNING, assigned={"dev-a": 0}, previous={"dev-a": DIGEST_1})
    o = RolloutService(store, "f").observations(rollout, ["dev-a"])["dev-a"].figures
    assert o.samples == 2 * target_windows + 1 and o.latency_samples == 2 * target_windows
    assert o.error_rate == pytest.approx(1 / o.samples)
    assert o.latency_ms_p95 == 2.0  # the median window: one slow window does not decide
    assert o.baseline_samples == 3 * baseline_windows
    newest_baseline = [1.0 + i / 100 for i in range(8)][-baseline_windows:]
    assert o.baseline_latency_ms_p95 == pytest.approx(sorted(newest_baseline)[len(newest_baseline) // 2])


def test_progress_moves_only_when_the_reported_update_state_changes(store: Store) -> None:
    """A retained report delivered again (a server restart) is no progress; a new chunk count is."""
    target = BundleRef(name="digits", version="2", digest=DIGEST_2)

    def report(phase: UpdatePhase, have: int, received_ms: int) -> None:
        store.record_reported("f", Reported(device_id="dev-a", ts=1, phase=phase, target=target, chunks_have=have,
                                            chunks_total=16), received_ms)

    report(UpdatePhase.FETCHING, 2, 1_000)
    report(UpdatePhase.FETCHING, 2, 5_000)  # the same report again
    row = store.device("f", "dev-a")
    assert (row.progress_ms, row.last_seen_ms) == (1_000, 5_000)
    assert (row.target_digest, row.chunks_have, row.chunks_total) == (DIGEST_2, 2, 16)
    report(UpdatePhase.FETCHING, 4, 6_000)
    assert store.device("f", "dev-a").progress_ms == 6_000
    report(UpdatePhase.VERIFYING, 16, 7_000)
    report(UpdatePhase.VERIFYING, 16, 9_000)
    assert store.device("f", "dev-a").progress_ms == 7_000
    store.record_status("f", status("dev-b"), 8_000)  # known only by its status: no update state yet
    assert store.device("f", "dev-b").progress_ms is None


def test_telemetry_batches_drop_duplicate_windows(store: Store) -> None:
    batch = [window("dev-a", 1, 1_000), window("dev-a", 2, 2_000), window("dev-a", 1, 1_000),  # in-batch dup
             window("dev-b", 1, 1_500)]
    assert store.record_telemetry_batch("f", batch, 10_000) == 3
    # A QoS 1 redelivery of two stored windows plus one new, older window.
    again = [window("dev-a", 2, 2_000), window("dev-b", 1, 1_500), window("dev-a", 0, 500)]
    assert store.record_telemetry_batch("f", again, 11_000) == 1
    assert not store.record_telemetry("f", window("dev-a", 0, 500), 12_000)
    assert store.record_telemetry("f", window("dev-a", 3, 3_000, latency_ms_p95=1.5), 12_000)
    assert store.record_telemetry_batch("f", [], 12_000) == 0

    assert store.telemetry_count("f") == 5
    assert store.telemetry_count("f", "dev-a") == 4
    assert store.telemetry_count("other") == 0
    assert store.telemetry_window_ids("f", "dev-a") == ["dev-a:w:0", "dev-a:w:1", "dev-a:w:2", "dev-a:w:3"]
    newest = store.telemetry_windows("f", "dev-a", limit=2)
    assert [w["window_id"] for w in newest] == ["dev-a:w:3", "dev-a:w:2"]
    assert newest[0]["latency_ms_p95"] == 1.5
    assert [w["window_id"] for w in store.telemetry_windows("f", "dev-a", since_ms=1_000)] == [
        "dev-a:w:3", "dev-a:w:2", "dev-a:w:1"]
    dev_a = store.device("f", "dev-a")
    # The newest window is the device's last telemetry, even though an older one arrived after it.
    assert dev_a.last_telemetry_ms == 3_000 and dev_a.last_telemetry is not None
    assert dev_a.last_telemetry["window_id"] == "dev-a:w:3"
    assert (dev_a.first_seen_ms, dev_a.last_seen_ms) == (10_000, 12_000)
    assert store.device("f", "dev-b").last_telemetry_ms == 1_500


def test_a_refused_desired_message_marks_the_device_with_the_servers_time_and_the_reason(store: Store) -> None:
    store.record_status("f", status("dev-a"), 1_000)
    store.record_event("f", Event(device_id="dev-a", ts=1, kind=EventKind.UPDATE_STARTED, message="fetching"), 2_000)
    assert (store.device("f", "dev-a").rejected_ms, store.device("f", "dev-a").rejected_reason) == (None, None)
    store.record_event("f", Event(device_id="dev-a", ts=1, kind=EventKind.DESIRED_REJECTED,
                                  message="signed by key k1, which is not in the trust list"), 3_000)
    row = store.device("f", "dev-a")
    assert (row.rejected_ms, row.rejected_reason) == (3_000, "signed by key k1, which is not in the trust list")
    assert (row.last_seen_ms, row.online) == (3_000, True)
    # A device the server knows only by this event is recorded too (its status may come later).
    store.record_event("f", Event(device_id="dev-new", ts=1, kind=EventKind.DESIRED_REJECTED), 4_000)
    row = store.device("f", "dev-new")
    assert (row.rejected_ms, row.rejected_reason, row.first_seen_ms) == (4_000, "desired message refused", 4_000)
    assert [e["kind"] for e in store.events("f", "dev-a")] == ["desired_rejected", "update_started"]


def test_drift_details_and_events(store: Store) -> None:
    def detail(n: int, ts: int, score: float) -> DriftDetail:
        return DriftDetail(device_id="dev-a", window_id=f"dev-a:w:{n}", ts=ts, n_samples=100, overall_score=score,
                           drifted_features=[], features=[])

    assert store.latest_drift("f", "dev-a") is None
    store.record_drift("f", detail(1, 1_000, 0.1))
    store.record_drift("f", detail(2, 2_000, 0.2))
    store.record_drift("f", detail(2, 2_000, 0.9))  # redelivered: the first copy stays
    store.record_drift("f", detail(0, 500, 0.3))
    latest = store.latest_drift("f", "dev-a")
    assert latest is not None and latest["overall_score"] == 0.2

    for i, kind in enumerate([EventKind.AGENT_STARTED, EventKind.UPDATE_STARTED, EventKind.UPDATE_COMMITTED]):
        store.record_event("f", Event(device_id="dev-a" if i != 1 else "dev-b", ts=1_000 + i, kind=kind,
                                      message=f"event {i}"))
    assert [e["message"] for e in store.events("f")] == ["event 2", "event 1", "event 0"]
    assert [e["message"] for e in store.events("f", "dev-a")] == ["event 2", "event 0"]
    assert [e["kind"] for e in store.events("f", limit=1)] == ["update_committed"]
    assert store.events("other") == []


# --- tags ---------------------------------------------------------------------------------------------


def test_device_tags_select_devices(store: Store) -> None:
    for device in ("dev-a", "dev-b", "dev-c"):
        store.record_status("f", status(device), 1_000)
    store.record_status("g", status("dev-a"), 1_000)
    store.set_device_tags("f", "dev-a", ["pi4", "canary", "pi4"])
    store.set_device_tags("f", "dev-b", ["pi4"])
    store.set_device_tags("g", "dev-a", ["jetson"])

    assert store.device("f", "dev-a").tags == ("canary", "pi4")
    assert [d.device_id for d in store.devices("f", tag="pi4")] == ["dev-a", "dev-b"]
    assert [d.device_id for d in store.devices("f", tag="canary")] == ["dev-a"]
    assert store.devices("f", tag="jetson") == []  # tags belong to one fleet
    assert {d.device_id: d.tags for d in store.devices("f")} == {"dev-a": ("canary", "pi4"), "dev-b": ("pi4",),
                                                                  "dev-c": ()}
    store.set_device_tags("f", "dev-a", ["lab"])  # replaces
    assert store.device("f", "dev-a").tags == ("lab",)
    store.set_device_tags("f", "dev-b", [])  # clears
    assert store.devices("f", tag="pi4") == []

    with pytest.raises(NotFoundError, match="dev-z"):
        store.set_device_tags("f", "dev-z", ["pi4"])
    for bad in ("", "a,b", "tag:x", "with space"):
        with pytest.raises(ConfigError, match="invalid tag"):
            store.set_device_tags("f", "dev-a", [bad])
    with pytest.raises(ConfigError, match="invalid tag"):
        store.devices("f", tag="a,b")
    assert store.device("f", "dev-a").tags == ("lab",)  # a refused change changed nothing

    # A deployment may select by tag: it follows the tags as they are now.
    store.add_deployment("f", DIGEST_1, "all")
    store.add_deployment("f", DIGEST_2, "tag:lab,dev-c")
    assert {d: dep.digest for d, dep in store.desired_for("f").items()} == {
        "dev-a": DIGEST_2, "dev-b": DIGEST_1, "dev-c": DIGEST_2}


def test_desired_for_is_the_newest_deployment_naming_each_device(store: Store) -> None:
    """The fast path (selectors parsed once, tags looked up) against the definition, device by device."""
    rng = random.Random(7)
    devices = [f"dev-{i:02d}" for i in range(12)]
    tag_names = ["pi4", "lab", "canary"]
    for device in devices[:10]:  # dev-10 and dev-11 are named by deployments before they connect
        store.record_status("f", status(device), 1_000)
        store.set_device_tags("f", device, rng.sample(tag_names, rng.randint(0, 2)))
    for n in range(25):
        terms = rng.sample(devices, rng.randint(0, 4)) + [f"tag:{t}" for t in rng.sample(tag_names, rng.randint(0, 1))]
        selector = "all" if n % 9 == 0 or not terms else ",".join(terms)
        store.add_deployment("f", DIGEST_1 if n % 2 else DIGEST_2, selector)
    deployments = store.deployments("f")
    tags = {d.device_id: d.tags for d in store.devices("f")}
    expected = {}
    for device in devices:
        naming = [dep for dep in deployments if dep.targets(device, tags.get(device, ()))]
        if naming:
            expected[device] = naming[-1].id
    assert {d: dep.id for d, dep in store.desired_for("f").items()} == expected


# --- retention ----------------------------------------------------------------------------------------


def test_prune_deletes_old_rows_of_one_fleet_in_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "PRUNE_BATCH", 3)  # several batches per table
    store.record_telemetry_batch("f", [window("dev-a", n, 1_000 + n) for n in range(10)], 5_000)
    store.record_telemetry_batch("g", [window("dev-g", n, 1_000 + n) for n in range(4)], 5_000)
    for n in range(8):
        store.record_drift("f", DriftDetail(device_id="dev-a", window_id=f"dev-a:w:{n}", ts=1_000 + n, n_samples=1,
                                            overall_score=0.0, drifted_features=[], features=[]))
        store.record_event("f", Event(device_id="dev-a", ts=1_000 + n, kind=EventKind.AGENT_STARTED))
    store.audit("alice", "deploy", "x")

    assert store.prune("f", older_than_ms=1_007) == {"telemetry": 7, "drift": 7, "events": 7}
    assert store.telemetry_window_ids("f", "dev-a") == ["dev-a:w:7", "dev-a:w:8", "dev-a:w:9"]
    assert store.latest_drift("f", "dev-a") is not None
    assert [e["ts"] for e in store.events("f")] == [1_007]
    assert store.telemetry_count("g") == 4  # another fleet
    assert len(store.audit_log()) == 1  # the audit log is not telemetry
    assert store.device("f", "dev-a").last_telemetry_ms == 1_009
    assert store.prune("f", older_than_ms=1_007) == {"telemetry": 0, "drift": 0, "events": 0}


# --- schema and migrations ----------------------------------------------------------------------------


def test_migrated_schema_is_what_the_store_declares(store: Store) -> None:
    assert migrations.head_revision() == migrations.HEAD
    assert store.schema_revision() == migrations.HEAD
    with store._engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_downgrade_then_reopen_upgrades_and_keeps_rows(store: Store, store_backend: StoreBackend,
                                                       tmp_path: Path) -> None:
    store.record_status("f", status("dev-a"), 1_000)
    store.record_telemetry("f", window("dev-a", 1, 1_000), 1_000)
    store.set_device_tags("f", "dev-a", ["lab"])
    with store._engine.begin() as conn:
        migrations.downgrade(conn, "0001")
    assert store.schema_revision() == "0001"
    reopened = Store(store_backend.target(tmp_path))
    try:
        assert reopened.schema_revision() == migrations.HEAD
        assert reopened.telemetry_count("f") == 1
        assert reopened.device("f", "dev-a").tags == ()  # the tags table was dropped with its revision
        reopened.set_device_tags("f", "dev-a", ["lab"])
        assert [d.device_id for d in reopened.devices("f", tag="lab")] == ["dev-a"]
    finally:
        reopened.close()


def test_processes_opening_a_new_database_at_once_migrate_it_once(store_backend: StoreBackend,
                                                                  tmp_path: Path) -> None:
    target = store_backend.target(tmp_path)
    start = threading.Barrier(4)

    def open_store() -> Store:
        start.wait(timeout=30)
        return Store(target)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(open_store) for _ in range(4)]
        opened = [f.result(timeout=60) for f in futures]  # re-raises any thread's error
    assert {s.schema_revision() for s in opened} == {migrations.HEAD}
    for s in opened:
        s.close()


# --- SQLite only: files written before migrations, and concurrent connections -------------------------

#: The schema as the store wrote it before SQLAlchemy (its last release), verbatim.
LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, runtime TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, created_at TEXT NOT NULL, parent_version TEXT, manifest_json TEXT NOT NULL,
    parent_digest TEXT, created_by TEXT NOT NULL DEFAULT '', source_sha256 TEXT, recipe_json TEXT, signed_by TEXT,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fleet TEXT NOT NULL, digest TEXT NOT NULL, selector TEXT NOT NULL,
    created_ms INTEGER NOT NULL, rollout_id TEXT, rollback INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, fleet TEXT NOT NULL, target_digest TEXT NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL,
    revision INTEGER NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    fleet TEXT NOT NULL, device_id TEXT NOT NULL, online INTEGER NOT NULL DEFAULT 0, agent_version TEXT,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, active_name TEXT, active_version TEXT,
    active_digest TEXT, phase TEXT, last_error TEXT, last_telemetry_json TEXT, last_telemetry_ms INTEGER,
    PRIMARY KEY (fleet, device_id)
);
CREATE TABLE IF NOT EXISTS telemetry (
    window_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (fleet, device_id, ts_ms);
CREATE TABLE IF NOT EXISTS drift (
    window_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL, last_used_ms INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""
#: An earlier file: models without lineage columns, deployments without rollout columns, no rollouts or audit.
OLDEST_SCHEMA = """
CREATE TABLE models (
    name TEXT NOT NULL, version TEXT NOT NULL, digest TEXT NOT NULL, runtime TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, created_at TEXT NOT NULL, parent_version TEXT, manifest_json TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fleet TEXT NOT NULL, digest TEXT NOT NULL, selector TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE devices (
    fleet TEXT NOT NULL, device_id TEXT NOT NULL, online INTEGER NOT NULL DEFAULT 0, agent_version TEXT,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, active_name TEXT, active_version TEXT,
    active_digest TEXT, phase TEXT, last_error TEXT, last_telemetry_json TEXT, last_telemetry_ms INTEGER,
    PRIMARY KEY (fleet, device_id)
);
CREATE TABLE telemetry (
    window_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE drift (
    window_id TEXT PRIMARY KEY, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fleet TEXT NOT NULL, device_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, payload TEXT NOT NULL
);
"""


def _write_legacy_rows(db: sqlite3.Connection, *, lineage: bool) -> None:
    if lineage:
        db.execute("INSERT INTO models VALUES ('digits','1',?,'onnxruntime',10,'2024-01-01','0','{\"m\":1}',NULL,"
                   "'bob',NULL,NULL,NULL)", (DIGEST_1,))
        db.execute("INSERT INTO deployments (fleet, digest, selector, created_ms, rollout_id, rollback) "
                   "VALUES ('default',?,'all',5,'r-1',1)", (DIGEST_1,))
        db.execute("INSERT INTO rollouts VALUES ('r-1','default',?,'running','{}',3,5,6)", (DIGEST_1,))
        db.execute("INSERT INTO audit (ts_ms, actor, action, target, reason, details) "
                   "VALUES (7,'bob','deploy','deployment-1','','{}')")
        db.execute("INSERT INTO tokens VALUES ('ops','" + "e" * 64 + "',1,NULL,0)")
    else:
        db.execute("INSERT INTO models VALUES ('digits','1',?,'onnxruntime',10,'2024-01-01','0','{\"m\":1}')",
                   (DIGEST_1,))
        db.execute("INSERT INTO deployments (fleet, digest, selector, created_ms) VALUES ('default',?,'all',5)",
                   (DIGEST_1,))
    db.execute("INSERT INTO devices (fleet, device_id, online, first_seen_ms, last_seen_ms, last_telemetry_json, "
               "last_telemetry_ms) VALUES ('default','dev-a',1,1,2,'{\"window_id\":\"dev-a:w:1\"}',2)")
    db.execute("INSERT INTO telemetry VALUES ('dev-a:w:1','default','dev-a',2,'{\"window_id\":\"dev-a:w:1\"}')")
    db.execute("INSERT INTO drift VALUES ('dev-a:w:1','default','dev-a',2,'{\"overall_score\":0.5}')")
    db.execute("INSERT INTO events (fleet, device_id, ts_ms, kind, payload) "
               "VALUES ('default','dev-a',3,'agent_started','{\"kind\":\"agent_started\"}')")


@pytest.mark.parametrize("schema", ["last-release", "oldest"])
def test_a_store_file_from_before_migrations_is_adopted_with_its_rows(tmp_path: Path, schema: str) -> None:
    path = tmp_path / "edgeops.db"
    db = sqlite3.connect(path)
    db.executescript(LEGACY_SCHEMA if schema == "last-release" else OLDEST_SCHEMA)
    _write_legacy_rows(db, lineage=schema == "last-release")
    db.commit()
    db.close()

    store = Store(path)
    try:
        assert store.schema_revision() == migrations.HEAD
        model = store.model("digits", "1")
        assert model.digest == DIGEST_1 and store.manifest_json("digits", "1") == '{"m":1}'
        assert model.created_by == ("bob" if schema == "last-release" else "")  # the added column's default
        [deployment] = store.deployments("default")
        assert (deployment.id, deployment.selector, deployment.created_ms) == (1, "all", 5)
        assert deployment.rollback is (schema == "last-release")
        device = store.device("default", "dev-a")
        assert device.online and device.last_telemetry == {"window_id": "dev-a:w:1"} and device.tags == ()
        assert store.telemetry_window_ids("default", "dev-a") == ["dev-a:w:1"]
        assert store.latest_drift("default", "dev-a") == {"overall_score": 0.5}
        assert store.events("default") == [{"kind": "agent_started"}]
        if schema == "last-release":
            assert store.rollout_record("r-1") == ("{}", 3)
            assert [a["actor"] for a in store.audit_log()] == ["bob"]
        # Everything works on the adopted file, and ids continue after the old ones.
        assert store.add_deployment("default", DIGEST_1, "dev-a").id == 2
        store.create_rollout("default", "r-2", DIGEST_1, "running", "{}")
        store.set_device_tags("default", "dev-a", ["lab"])
        assert store.record_telemetry("default", window("dev-a", 2, 10), 10)
        assert not store.record_telemetry("default", window("dev-a", 1, 2), 10)
    finally:
        store.close()
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if schema == "last-release":
            assert raw.execute("SELECT name FROM tokens").fetchall() == [("ops",)]  # not the store's: untouched
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()
    assert {"device_tags", "alembic_version", "rollouts", "audit"} <= tables
    reopened = Store(path)
    assert reopened.schema_revision() == migrations.HEAD  # reopening is a no-op
    reopened.close()


def test_sqlite_connections_use_wal_and_normal_sync(tmp_path: Path) -> None:
    store = Store(tmp_path / "edgeops.db")
    try:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    finally:
        store.close()


def test_sqlite_file_shared_by_concurrent_writers_and_a_reader(tmp_path: Path) -> None:
    """The server ingesting, the CLI writing and a reader at once, each with its own store (as
    separate processes have): no write fails, nothing is lost, a reader never sees a count shrink."""
    path = tmp_path / "edgeops.db"
    server, cli, reader = Store(path), Store(path), Store(path)
    batches, per_batch = 40, 50
    counts: list[int] = []
    done = threading.Event()

    def ingest() -> None:
        for b in range(batches):
            windows = [window(f"dev-{i % 7}", b * per_batch + i, b * per_batch + i) for i in range(per_batch)]
            assert server.record_telemetry_batch("f", windows + windows[:5], 1_000 + b) == per_batch

    def operate() -> None:
        for i in range(60):
            cli.audit("alice", "deploy", f"deployment-{i}")
            cli.add_deployment("f", DIGEST_1, "all")

    def read() -> None:
        while not done.is_set():
            counts.append(reader.telemetry_count("f"))
            reader.devices("f")

    try:
        with ThreadPoolExecutor(3) as pool:
            reading = pool.submit(read)
            writers = [pool.submit(ingest), pool.submit(operate)]
            try:
                for future in writers:
                    future.result(timeout=120)  # re-raises a writer's error
            finally:
                done.set()
            reading.result(timeout=30)
        assert reader.telemetry_count("f") == batches * per_batch
        assert len(reader.audit_log(limit=1000)) == 60 and len(reader.deployments("f")) == 60
        assert counts and counts == sorted(counts)
    finally:
        for s in (server, cli, reader):
            s.close()


def test_sqlite_write_lock_held_too_long_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holding the write lock past the busy timeout: a StoreUnavailableError on the
    ingestion path and the SQLAlchemy path alike, and the store works again once the lock is gone."""
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "edgeops.db"
    store = Store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.record_telemetry_batch("f", [window("dev-a", 1, 1_000)], 1_000)
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.audit("alice", "deploy", "x")
        assert store.telemetry_count("f") == 0  # readers are never blocked (WAL)
        holder.execute("ROLLBACK")
        assert store.record_telemetry_batch("f", [window("dev-a", 1, 1_000)], 1_000) == 1
        assert len(store.audit_log()) == 0
        # A bug (bad SQL) is not dressed up as an unavailable database.
        assert not store._is_unavailability(sqlite3.OperationalError("no such table: nothing"))
    finally:
        holder.close()
        store.close()
