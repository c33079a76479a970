"""The live bus behind the dashboard's event stream: bounded queues, coalescing, dropping slow
readers, device filters, the SSE text, and what the server's ingestion publishes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeops.protocol import (
    BundleRef,
    DeviceChannel,
    DriftDetail,
    Event,
    EventKind,
    FeatureDriftDetail,
    Presence,
    Reported,
    Status,
    Telemetry,
    UpdatePhase,
    device_topic,
)
from edgeops.transport import BrokerAddress, Inbound
from fleet_server.config import ServerConfig
from fleet_server.dashboard.views import RolloutRelay, gate_values
from fleet_server.live import LiveBus, LiveKind, LiveMessage, Subscription, relay, sse_frame, sse_stream
from fleet_server.rollout import (
    DeviceHealth,
    Figures,
    Gates,
    Observation,
    Rollout,
    RolloutState,
    Stage,
    device_health,
)
from fleet_server.server import FleetServer

DIGEST = "d" * 64
OLD = "o" * 64


def window(device: str, seq: int, **fields: object) -> Telemetry:
    return Telemetry(device_id=device, window_id=f"{device}:b:{seq}", ts=1_000 + seq, window_s=1.0,
                     inferences=10 + seq, **fields)  # type: ignore[arg-type]


# --- the bus ----------------------------------------------------------------------------------------


def test_keyed_messages_coalesce_in_place_with_the_newest_fields() -> None:
    bus = LiveBus(max_pending=10)
    sub = bus.subscribe()
    bus.publish(LiveKind.DEVICE, {"device_id": "a", "online": True, "agent_version": "1"}, key="device:a")
    bus.publish(LiveKind.EVENT, {"n": 1})
    bus.publish(LiveKind.DEVICE, {"device_id": "a", "phase": "fetching"}, key="device:a")
    bus.publish(LiveKind.DEVICE, {"device_id": "a", "phase": "committed"}, key="device:a")
    bus.publish(LiveKind.EVENT, {"n": 2})
    got = sub.take()
    assert [m.kind for m in got] == [LiveKind.DEVICE, LiveKind.EVENT, LiveKind.EVENT]
    # Patches of one device merge: presence from the first, the newest phase from the last.
    assert got[0].data == {"device_id": "a", "online": True, "agent_version": "1", "phase": "committed"}
    assert got[0].seq > got[2].seq - 2  # carries the newest sequence number
    assert [m.data["n"] for m in got[1:]] == [1, 2]  # events never coalesce
    assert sub.coalesced == 2 and sub.take() == []


def test_a_reader_that_falls_behind_is_dropped_not_buffered() -> None:
    bus = LiveBus(max_pending=3)
    slow, fast = bus.subscribe(), bus.subscribe()
    for n in range(3):
        bus.publish(LiveKind.EVENT, {"n": n})
        assert len(fast.take()) == 1
    assert slow.pending == 3 and not slow.overflowed
    # Coalescing still fits; a new key does not.
    bus.publish(LiveKind.TELEMETRY, {"device_id": "a"}, key="telemetry:a")
    assert slow.overflowed and slow.pending == 0
    assert bus.dropped_total == 1 and bus.subscribers == 1
    assert bus.publish(LiveKind.EVENT, {"n": 9}) == 1  # only the fast one remains
    assert slow.take() == [] and [m.data for m in fast.take()] == [{"device_id": "a"}, {"n": 9}]


def test_device_messages_reach_only_readers_of_that_device() -> None:
    bus = LiveBus()
    everyone, watcher, other = bus.subscribe(), bus.subscribe(device="a"), bus.subscribe(device="b")
    assert bus.publish(LiveKind.DRIFT, {"device_id": "a"}, key="drift:a", device="a") == 1
    assert bus.publish(LiveKind.TELEMETRY, {"device_id": "a"}, key="telemetry:a") == 3
    assert [m.kind for m in watcher.take()] == [LiveKind.DRIFT, LiveKind.TELEMETRY]
    assert [m.kind for m in everyone.take()] == [LiveKind.TELEMETRY]
    assert [m.kind for m in other.take()] == [LiveKind.TELEMETRY]


def test_nothing_is_built_or_kept_without_readers_and_close_ends_everyone() -> None:
    bus = LiveBus()
    assert bus.publish(LiveKind.EVENT, {"n": 1}) == 0 and bus.published_total == 0
    woken: list[int] = []
    sub = bus.subscribe(wake=lambda: woken.append(1))
    bus.publish(LiveKind.EVENT, {"n": 1})
    assert woken == [1]
    bus.close()
    assert sub.closed and woken == [1, 1] and bus.subscribers == 0
    assert bus.subscribe().closed  # after close, a new reader ends at once
    assert bus.publish(LiveKind.EVENT, {"n": 2}) == 0


def test_a_reader_whose_event_loop_is_gone_is_dropped() -> None:
    bus = LiveBus()

    def closed_loop() -> None:
        raise RuntimeError("Event loop is closed")

    sub = bus.subscribe(wake=closed_loop)
    assert bus.publish(LiveKind.EVENT, {"n": 1}) == 0
    assert sub.closed and bus.subscribers == 0 and bus.dropped_total == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        LiveBus(max_pending=0)
    with pytest.raises(ValueError, match="max_pending"):
        Subscription(0)


def test_publishers_in_many_threads_lose_nothing_a_reader_keeps_up_with() -> None:
    bus = LiveBus(max_pending=10_000)
    sub = bus.subscribe()

    def publish(t: int) -> None:
        for n in range(500):
            bus.publish(LiveKind.EVENT, {"t": t, "n": n})

    threads = [threading.Thread(target=publish, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sub.take()
    assert len(got) == 2000 and len({m.seq for m in got}) == 2000
    for t in range(4):
        assert [m.data["n"] for m in got if m.data["t"] == t] == list(range(500))


# --- what the stream carries ------------------------------------------------------------------------


def test_protocol_messages_become_device_patches_windows_events_and_drift_columns() -> None:
    status = Status(device_id="a", state=Presence.OFFLINE, ts=5, agent_version="0.1.0")
    assert relay(status, 77) == (LiveKind.DEVICE, {"device_id": "a", "online": False, "agent_version": "0.1.0",
                                                   "last_seen_ms": 77}, "device:a", None)
    reported = Reported(device_id="a", ts=6, phase=UpdatePhase.COMMITTED, active=BundleRef("digits", "2", DIGEST))
    kind, patch, key, device = relay(reported, 78) or ("", {}, None, None)
    assert (kind, key, device) == (LiveKind.DEVICE, "device:a", None)
    assert patch["running"] == "digits:2" and patch["active_digest"] == DIGEST and patch["phase"] == "committed"
    tel = relay(window("a", 1, latency_ms_p95=2.5), 79)
    assert tel is not None and tel[0] == LiveKind.TELEMETRY and tel[2] == "telemetry:a"
    assert tel[1]["latency_ms_p95"] == 2.5
    event = relay(Event(device_id="a", ts=7, kind=EventKind.DRIFT_ALERT, message="3 of 64"), 80)
    assert event is not None and event[0] == LiveKind.EVENT and event[2] is None and event[1]["kind"] == "drift_alert"
    features = [FeatureDriftDetail(index=i, psi=0.1 * i, js_distance=None, ks_statistic=None, ks_pvalue=None,
                                   wasserstein=None, mean_shift_sd=None, nan_rate=None, out_of_range_rate=None)
                for i in range(3)]
    detail = DriftDetail(device_id="a", window_id="a:b:1", ts=8, n_samples=10, overall_score=0.33,
                         drifted_features=[2], features=features)
    drift = relay(detail, 81)
    assert drift is not None and drift[0] == LiveKind.DRIFT and drift[3] == "a"  # only for readers of device a
    assert drift[1]["psi"] == pytest.approx([0.0, 0.1, 0.2]) and drift[1]["drifted_features"] == [2]


def test_sse_frames_are_single_line_json_events() -> None:
    frame = sse_frame("telemetry", {"text": "two\nlines", "x": 1.5}, seq=7)
    assert frame == 'id: 7\nevent: telemetry\ndata: {"text":"two\\nlines","x":1.5}\n\n'
    with pytest.raises(ValueError):
        sse_frame("telemetry", {"x": float("nan")})  # JSON has no NaN: never send invalid JSON


def _collect(stream: AsyncIterator[str], until: str, limit: int = 50) -> list[str]:
    """Frames of ``stream`` up to and including the first one containing ``until``."""

    async def run() -> list[str]:
        out: list[str] = []
        async for frame in stream:
            out.append(frame)
            if until in frame or len(out) >= limit:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return out

    return asyncio.run(asyncio.wait_for(run(), 30))


def test_the_stream_says_hello_relays_from_other_threads_and_ends_when_the_bus_closes() -> None:
    bus = LiveBus()

    async def scenario() -> list[str]:
        stream = sse_stream(bus, device="a", heartbeat_s=30, hello={"fleet": "f"})
        frames = [await stream.__anext__()]
        assert bus.subscribers == 1

        def publisher() -> None:
            bus.publish(LiveKind.TELEMETRY, {"device_id": "a", "n": 1}, key="telemetry:a")
            bus.publish(LiveKind.DRIFT, {"device_id": "a"}, key="drift:a", device="a")
            bus.close()

        threading.Thread(target=publisher).start()
        frames.extend([frame async for frame in stream])
        return frames

    frames = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert frames[0].startswith("retry: ") and "event: hello" in frames[0] and '"fleet":"f"' in frames[0]
    assert '"device":"a"' in frames[0]
    kinds = [line.split(": ", 1)[1] for f in frames[1:] for line in f.splitlines() if line.startswith("event: ")]
    assert kinds == ["telemetry", "drift"]
    assert bus.subscribers == 0


def test_an_idle_stream_sends_heartbeats_and_a_dropped_one_says_reset() -> None:
    bus = LiveBus(max_pending=2)
    frames = _collect(sse_stream(bus, heartbeat_s=0.01), until="heartbeat")
    assert frames[-1] == ": heartbeat\n\n" and bus.subscribers == 0  # closing the stream unsubscribes

    async def overflow() -> list[str]:
        stream = sse_stream(bus, heartbeat_s=30)
        frames = [await stream.__anext__()]
        for n in range(3):  # nobody reads meanwhile: the third distinct message overflows
            bus.publish(LiveKind.EVENT, {"n": n})
        frames.extend([frame async for frame in stream])
        return frames

    frames = asyncio.run(asyncio.wait_for(overflow(), 30))
    assert "event: reset" in frames[-1] and bus.dropped_total == 1 and bus.subscribers == 0


def test_a_stream_ends_at_the_heartbeat_after_its_credential_is_revoked() -> None:
    bus = LiveBus()
    allowed = [True, True, False]
    frames = _collect(sse_stream(bus, heartbeat_s=0.01, authorized=lambda: allowed.pop(0)), until="never")
    assert [f for f in frames if f.startswith(":")] == [": heartbeat\n\n"] * 2
    assert not allowed and bus.subscribers == 0


def test_dashboard_sessions_expire_are_bounded_and_can_be_dropped() -> None:
    from fleet_server.dashboard.routes import Sessions

    now = [0.0]
    sessions = Sessions(ttl_s=10, max_sessions=2, clock=lambda: now[0])
    a, b = sessions.create("eo_a"), sessions.create("eo_b")
    assert a != b and sessions.secret(a) == "eo_a" and sessions.secret("unknown") is None
    c = sessions.create("eo_c")  # a third one: the oldest is forgotten
    assert len(sessions) == 2 and sessions.secret(a) is None and sessions.secret(c) == "eo_c"
    sessions.drop(b)
    assert sessions.secret(b) is None
    now[0] = 10.0
    assert sessions.secret(c) is None and len(sessions) == 0  # expired, and forgotten


def test_subscriptions_are_data_not_threads() -> None:
    message = LiveMessage(1, LiveKind.EVENT, {"a": 1})
    sub = Subscription(1)
    assert sub.offer(message) and not sub.offer(LiveMessage(2, LiveKind.EVENT, {"a": 2}))
    assert sub.overflowed and sub.take() == []


# --- the server publishes what it ingests -------------------------------------------------------------


def test_the_server_publishes_ingested_messages_and_counts_them(tmp_path: Path) -> None:
    server = FleetServer(ServerConfig(home=tmp_path, broker=BrokerAddress("127.0.0.1", 1883), fleet="f"))
    try:
        sub = server.live.subscribe()

        def inbound(device: str, channel: DeviceChannel, payload: bytes) -> Inbound:
            return Inbound(device_topic("f", device, channel), payload, False)

        status = Status(device_id="a", state=Presence.ONLINE, ts=1, agent_version="0.1.0")
        w1, w2 = window("a", 1), window("a", 2)
        server.handle_batch([
            inbound("a", DeviceChannel.STATUS, status.encode()),
            inbound("a", DeviceChannel.TELEMETRY, w1.encode()),
            inbound("a", DeviceChannel.TELEMETRY, w1.encode()),  # QoS 1 redelivery
            inbound("a", DeviceChannel.TELEMETRY, w2.encode()),
            inbound("a", DeviceChannel.TELEMETRY, b"{not json"),
            inbound("b", DeviceChannel.TELEMETRY, w1.encode()),  # names another device than its topic
        ])
        counts = server.counters.snapshot()
        assert (counts.windows_stored, counts.windows_duplicate, counts.invalid) == (2, 1, 2)
        assert counts.received == {"status": 1, "telemetry": 3}
        got = sub.take()
        assert [m.kind for m in got] == [LiveKind.DEVICE, LiveKind.TELEMETRY]
        assert got[0].data["online"] is True
        assert got[1].data["window_id"] == w2.window_id  # the device's windows coalesced into the newest
    finally:
        server.live.close()
        server.store.close()


# --- rollout progress ---------------------------------------------------------------------------------


def obs(device: str, *, committed: bool = True, error_rate: float | None = 0.01, p95: float | None = 2.0,
        base: float | None = 2.0, drift: float | None = 0.1, last_seen_ms: int = 100_000,
        samples: int = 50) -> Observation:
    figures = Figures(error_rate=error_rate, latency_ms_p95=p95, drift_score=drift, baseline_latency_ms_p95=base,
                      samples=samples, latency_samples=samples, baseline_samples=samples)
    return Observation(device_id=device, online=True, last_seen_ms=last_seen_ms,
                       phase="committed" if committed else "probation", active_digest=DIGEST if committed else OLD,
                       figures=figures)


def test_gate_values_show_what_the_driver_judges() -> None:
    gates = Gates(max_error_rate=0.05, max_latency_ratio=1.5, max_drift_score=0.2, soak_s=30, latency_floor_ms=1.0)
    rollout = Rollout(id="r-1", target_digest=DIGEST, stages=(Stage("canary", count=2, gates=gates),),
                      state=RolloutState.RUNNING, assigned={"a": 0, "b": 0}, previous={"a": OLD, "b": OLD},
                      stage_settled_ms=90_000)
    now = 100_000
    values = {g["name"]: g for g in gate_values(rollout, {"a": obs("a"), "b": obs("b", p95=5.0, error_rate=0.2)}, now)}
    assert values["committed"]["value"] == 1.0 and values["committed"]["ok"] is True
    assert values["failed"]["value"] == 0.0 and values["failed"]["ok"] is True
    assert values["error_rate"]["value"] == pytest.approx(0.105) and values["error_rate"]["ok"] is False
    assert values["latency_ratio"]["value"] == pytest.approx(1.75) and values["latency_ratio"]["ok"] is False
    assert values["drift"]["value"] == pytest.approx(0.1) and values["drift"]["ok"] is True
    assert values["error_rate"]["label"] == "error rate (100 of 20 inferences)"
    # Too few inferences: the values show, but nothing is judged yet (what the driver does too).
    thin = {"a": obs("a", samples=5), "b": obs("b", p95=5.0, error_rate=0.2, samples=5)}
    values = {g["name"]: g for g in gate_values(rollout, thin, now)}
    assert values["error_rate"]["value"] == pytest.approx(0.105) and values["error_rate"]["ok"] is None
    assert values["latency_ratio"]["value"] is None and values["latency_ratio"]["ok"] is None
    # Soak and committed share hold a stage back, never fail it: unmet means "waiting" (None).
    assert values["soak"]["value"] == 10 and values["soak"]["threshold"] == 30 and values["soak"]["ok"] is None
    # A device still updating: committed share below the gate; nothing measured yet means "not judged".
    values = {g["name"]: g for g in gate_values(rollout, {"a": obs("a", committed=False)}, now)}
    assert values["committed"]["value"] == 0.0 and values["committed"]["ok"] is None
    assert values["error_rate"]["value"] is None and values["error_rate"]["ok"] is None
    assert device_health(obs("a", committed=False), DIGEST, gates, now) is DeviceHealth.PENDING
    # No drift gate: shown with no threshold and never judged.
    ungated = Rollout(id="r-2", target_digest=DIGEST, stages=(Stage("all", percent=100),), state=RolloutState.RUNNING)
    drift = next(g for g in gate_values(ungated, {}, now) if g["name"] == "drift")
    assert drift["threshold"] is None and drift["ok"] is None


def test_rollout_progress_is_published_only_with_readers_and_only_on_change(tmp_path: Path) -> None:
    from fleet_server.rollout_driver import RolloutService
    from fleet_server.store import Store

    store = Store(tmp_path / "edgeops.db")
    try:
        service = RolloutService(store, "f")
        store.record_status("f", Status(device_id="a", state=Presence.ONLINE, ts=1), 1)
        started = service.start_new(DIGEST, "all", "canary:1", Gates(), actor="test")
        bus = LiveBus()
        relay_ = RolloutRelay(service, bus, interval_s=1.0)
        assert relay_.maybe_publish(0.0) == 0  # nobody listens: nothing computed
        sub = bus.subscribe()
        assert relay_.maybe_publish(0.5) == 0  # the interval has not passed
        assert relay_.maybe_publish(1.0) == 1
        (message,) = sub.take()
        assert message.kind == LiveKind.ROLLOUT and message.data["id"] == started.id
        assert message.data["state"] == "running" and message.data["live"] is True
        assert {g["name"] for g in message.data["gates"]} >= {"committed", "error_rate", "soak"}
        assert relay_.maybe_publish(2.0) == 0 and sub.take() == []  # unchanged: not sent again
        service.tick()  # assigns the canary: the view changes
        assert relay_.maybe_publish(3.0) == 1
        assert json.loads(json.dumps(sub.take()[0].data))["assigned"] == 1
    finally:
        store.close()
