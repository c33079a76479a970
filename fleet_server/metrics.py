"""Prometheus metrics of the fleet server (``GET /metrics``, text exposition format).

Gauges are computed from the store on every scrape (devices by presence, update phase and running
version; rollouts by state; per-device latency and drift from each device's newest telemetry
window), counters come from the server's ingestion (:class:`IngestCounters`) and the live bus.
Formatting and escaping are prometheus_client's.

Label cardinality is bounded so a growing fleet cannot blow up the time-series database:

* per-device gauges exist for at most ``max_devices`` devices, the first ones by device id (a stable
  choice: the same device keeps its series from scrape to scrape). The others are folded into one
  series with ``device="_other"`` holding their *maximum* (an alert on the gauge still fires for any
  device); ``edgeops_device_series_folded`` says how many devices were folded;
* running versions are capped the same way (``version="_other"`` sums the rest);
* per-rollout series exist only for live rollouts (running, paused, waiting for approval).

``max_devices`` is ``ServerConfig.metrics_max_devices`` (default :data:`DEFAULT_MAX_DEVICES`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from edgeops import __version__
from edgeops.protocol import UpdatePhase
from fleet_server.rollout import Rollout, RolloutState
from fleet_server.rollout_driver import LIVE, RolloutService
from fleet_server.store import DeviceRow, Store, now_ms
from fleet_server.sync import SyncState, sync_state

#: Devices with their own per-device series (ServerConfig.metrics_max_devices).
DEFAULT_MAX_DEVICES = 100
#: Running versions with their own series; the rest is summed into ``version="_other"``.
MAX_VERSIONS = 50
#: The label value of the folded series.
OTHER = "_other"
#: Label value of devices that run no model or report no phase.
NONE = "none"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class IngestCounters:
    """What the server's ingestion counted since it started; read by scrapes from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.windows_stored = 0
        self.windows_duplicate = 0
        self.invalid = 0
        self.received: Counter[str] = Counter()

    def count_windows(self, stored: int, duplicates: int) -> None:
        with self._lock:
            self.windows_stored += stored
            self.windows_duplicate += duplicates

    def count_invalid(self) -> None:
        with self._lock:
            self.invalid += 1

    def count_received(self, channel: str) -> None:
        with self._lock:
            self.received[channel] += 1

    def snapshot(self) -> IngestSnapshot:
        with self._lock:
            return IngestSnapshot(self.windows_stored, self.windows_duplicate, self.invalid, dict(self.received))


@dataclass(frozen=True)
class IngestSnapshot:
    windows_stored: int = 0
    windows_duplicate: int = 0
    invalid: int = 0
    #: Valid messages received per device channel (status, reported, telemetry, drift, events).
    received: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSample:
    """Everything one scrape reports, gathered first so that formatting is pure (and unit-tested)."""

    fleet: str
    devices: list[DeviceRow]
    #: Rollouts per state (every state present, zeros included).
    rollout_states: dict[str, int]
    #: Live rollouts, for their per-rollout series.
    live_rollouts: list[Rollout]
    ingest: IngestSnapshot
    live_subscribers: int = 0
    live_dropped: int = 0
    #: Devices per sync state (fleet_server.sync), every state present.
    sync: dict[str, int] = field(default_factory=dict)


def gather(store: Store, fleet: str, counters: IngestCounters, live_subscribers: int = 0,
           live_dropped: int = 0) -> FleetSample:
    """Read what a scrape needs: one devices query, one small query per rollout state, live rollouts."""
    service = RolloutService(store, fleet)
    states = {s.value: len(store.rollout_ids(fleet, (s.value,))) for s in RolloutState}
    live = [service.get(i) for i in store.rollout_ids(fleet, LIVE)]
    devices = store.devices(fleet)
    desired, now = store.desired_for(fleet), now_ms()
    sync = Counter(sync_state(d, desired.get(d.device_id), now).value for d in devices)
    return FleetSample(fleet, devices, states, live, counters.snapshot(), live_subscribers, live_dropped,
                       {s.value: sync.get(s.value, 0) for s in SyncState})


def fleet_metrics(sample: FleetSample, max_devices: int = DEFAULT_MAX_DEVICES) -> list[Metric]:
    """The metric families of one scrape, with the cardinality bounds of the module docstring."""
    if max_devices < 0:
        raise ValueError(f"max_devices must be >= 0, got {max_devices}")
    fleet = sample.fleet
    out: list[Metric] = []
    info = GaugeMetricFamily("edgeops_build_info", "EdgeOps version of this server (always 1).",
                             labels=["version", "fleet"])
    info.add_metric([__version__, fleet], 1)
    out.append(info)

    devices = sample.devices
    presence = GaugeMetricFamily("edgeops_devices", "Devices by presence (their retained status).",
                                 labels=["fleet", "state"])
    online = sum(1 for d in devices if d.online)
    presence.add_metric([fleet, "online"], online)
    presence.add_metric([fleet, "offline"], len(devices) - online)
    out.append(presence)

    phases = GaugeMetricFamily("edgeops_devices_by_phase", "Devices by reported update phase.",
                               labels=["fleet", "phase"])
    by_phase = Counter(d.phase or NONE for d in devices)
    for phase in [p.value for p in UpdatePhase] + [NONE]:
        phases.add_metric([fleet, phase], by_phase.pop(phase, 0))
    for phase, count in sorted(by_phase.items()):  # a phase this server does not know (newer agent)
        phases.add_metric([fleet, phase], count)
    out.append(phases)

    if sample.sync:
        sync = GaugeMetricFamily("edgeops_devices_by_sync", "Devices by what they run against what they should "
                                 f"({', '.join(s.value for s in SyncState)}).",
                                 labels=["fleet", "state"])
        for state, count in sample.sync.items():
            sync.add_metric([fleet, state], count)
        out.append(sync)

    versions = GaugeMetricFamily("edgeops_devices_by_version", "Devices by the model version they run "
                                 f"(NAME:VERSION, '{NONE}'; more than {MAX_VERSIONS} versions fold into "
                                 f"'{OTHER}').", labels=["fleet", "version"])
    by_version = Counter(d.active_label or NONE for d in devices)
    ranked = sorted(by_version.items(), key=lambda kv: (-kv[1], kv[0]))
    for label, count in ranked[:MAX_VERSIONS]:
        versions.add_metric([fleet, label], count)
    if len(ranked) > MAX_VERSIONS:
        versions.add_metric([fleet, OTHER], sum(c for _, c in ranked[MAX_VERSIONS:]))
    out.append(versions)

    out.extend(_device_gauges(sample, max_devices))
    out.extend(_rollout_metrics(sample))
    out.extend(_counters(sample))
    return out


def _device_gauges(sample: FleetSample, max_devices: int) -> list[Metric]:
    fleet = sample.fleet
    ordered = sorted(sample.devices, key=lambda d: d.device_id)
    own, folded = ordered[:max_devices], ordered[max_devices:]
    out: list[Metric] = []
    for name, key, doc in (
        ("edgeops_device_latency_ms_p95", "latency_ms_p95", "p95 inference latency of the newest window, ms."),
        ("edgeops_device_drift_score", "drift_score", "Drift score (share of drifted features) of the newest window."),
    ):
        gauge = GaugeMetricFamily(name, f"{doc} One series per device for the first {max_devices} device ids; "
                                  f"device='{OTHER}' is the maximum over the rest.", labels=["fleet", "device"])
        for d in own:
            value = _telemetry_value(d, key)
            if value is not None:
                gauge.add_metric([fleet, d.device_id], value)
        rest = [v for v in (_telemetry_value(d, key) for d in folded) if v is not None]
        if rest:
            gauge.add_metric([fleet, OTHER], max(rest))
        out.append(gauge)
    count = GaugeMetricFamily("edgeops_device_series_folded",
                              f"Devices without per-device series (folded into device='{OTHER}').", labels=["fleet"])
    count.add_metric([fleet], len(folded))
    out.append(count)
    return out


def _telemetry_value(device: DeviceRow, key: str) -> float | None:
    value = (device.last_telemetry or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rollout_metrics(sample: FleetSample) -> list[Metric]:
    fleet = sample.fleet
    states = GaugeMetricFamily("edgeops_rollouts", "Rollouts by state.", labels=["fleet", "state"])
    for state, count in sorted(sample.rollout_states.items()):
        states.add_metric([fleet, state], count)
    info = GaugeMetricFamily("edgeops_rollout_info", "Live rollouts (always 1) with their state and current stage.",
                             labels=["fleet", "rollout", "state", "stage"])
    stage = GaugeMetricFamily("edgeops_rollout_stage", "Current stage of a live rollout (1 = first).",
                              labels=["fleet", "rollout"])
    stages = GaugeMetricFamily("edgeops_rollout_stages", "Stages of a live rollout.", labels=["fleet", "rollout"])
    devices = GaugeMetricFamily("edgeops_rollout_devices", "Devices of a live rollout: assigned the target, and "
                                "of those committed to it.", labels=["fleet", "rollout", "status"])
    rows = {d.device_id: d for d in sample.devices}
    for r in sample.live_rollouts:
        info.add_metric([fleet, r.id, r.state.value, r.stages[r.stage_index].name], 1)
        stage.add_metric([fleet, r.id], r.stage_index + 1)
        stages.add_metric([fleet, r.id], len(r.stages))
        committed = sum(1 for d in r.assigned if (row := rows.get(d)) is not None
                        and row.active_digest == r.target_digest and row.phase == UpdatePhase.COMMITTED.value)
        devices.add_metric([fleet, r.id, "assigned"], len(r.assigned))
        devices.add_metric([fleet, r.id, "committed"], committed)
    return [states, info, stage, stages, devices]


def _counters(sample: FleetSample) -> list[Metric]:
    fleet = sample.fleet
    ingest = sample.ingest
    out: list[Metric] = []
    for name, doc, value in (
        ("edgeops_telemetry_windows_stored", "Telemetry windows stored since the server started.",
         ingest.windows_stored),
        ("edgeops_telemetry_windows_duplicate", "Telemetry windows dropped as duplicates (QoS 1 redelivery).",
         ingest.windows_duplicate),
        ("edgeops_messages_invalid", "Inbound messages refused by validation and dropped.", ingest.invalid),
        ("edgeops_live_subscribers_dropped", "Dashboard streams dropped for falling behind.", sample.live_dropped),
    ):
        counter = CounterMetricFamily(name, doc, labels=["fleet"])
        counter.add_metric([fleet], value)
        out.append(counter)
    received = CounterMetricFamily("edgeops_messages_received", "Valid device messages received, by channel.",
                                   labels=["fleet", "channel"])
    for channel, count in sorted(ingest.received.items()):
        received.add_metric([fleet, channel], count)
    out.append(received)
    subscribers = GaugeMetricFamily("edgeops_live_subscribers", "Open dashboard event streams.", labels=["fleet"])
    subscribers.add_metric([fleet], sample.live_subscribers)
    out.append(subscribers)
    return out


class _Families:
    """Adapts a list of families to what ``generate_latest`` takes (anything with ``collect``)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render(families: Iterable[Metric]) -> bytes:
    """The text exposition format of these families."""
    return generate_latest(_Families(families))
