"""What the dashboard shows, as JSON-able dicts built from the store (no web framework here).

* :func:`overview` — devices, rollouts with their gates, recent drift alerts: the page's snapshot;
* :func:`device_detail` — one device's telemetry windows, drift heatmap columns and update history;
* :func:`rollout_payload` — a rollout as the API shows it plus each gate's current value against
  its threshold (:func:`gate_values`, computed like :func:`fleet_server.rollout.evaluate_stage`);
* :class:`RolloutRelay` — the server's periodic publication of rollout progress to the live bus.

The browser keeps the snapshot and merges the live stream's messages into it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from edgeops.errors import NotFoundError
from edgeops.protocol import EventKind
from fleet_server import rollout as logic
from fleet_server.live import LiveBus, LiveKind, drift_column
from fleet_server.operations import FleetOperations, rollout_view
from fleet_server.rollout_driver import LIVE, RolloutService
from fleet_server.store import Store, StoreUnavailableError, now_ms

log = logging.getLogger(__name__)

#: Telemetry windows per device the device view charts (newest ones).
TELEMETRY_WINDOWS = 120
#: Drift windows per device in the heatmap (newest ones).
DRIFT_WINDOWS = 60
#: How many drift alerts the overview lists (newest ones).
ALERTS = 50
#: Terminal rollouts listed besides the live ones (newest first).
FINISHED_ROLLOUTS = 10
#: Events that make up a device's update history.
UPDATE_KINDS = (
    EventKind.UPDATE_STARTED, EventKind.UPDATE_STATE, EventKind.UPDATE_COMMITTED, EventKind.UPDATE_FAILED,
    EventKind.ROLLBACK, EventKind.DESIRED_REJECTED, EventKind.CHUNK_REJECTED, EventKind.MODEL_LOADED)
UPDATE_HISTORY = 50


# --- rollouts -------------------------------------------------------------------------------------


def gate_values(rollout: logic.Rollout, observations: dict[str, logic.Observation], now: int) -> list[dict[str, Any]]:
    """Each gate of the current stage: its current value, threshold and whether it passes now.

    ``ok`` is None while there is nothing to judge (no device resolved, fewer inferences than the
    stage's ``min_inferences``) and, for the gates a stage *waits* for (committed share, soak time),
    while they are not reached yet: those hold a stage back, they never fail it. The figures are
    :func:`fleet_server.rollout.stage_figures`, the ones the driver decides on.
    """
    g = rollout.stages[rollout.stage_index].gates
    f = logic.stage_figures(rollout, observations, now)
    members = len(f.members)
    committed_share = len(f.committed) / members if members else None
    failed_share = len(f.failed) / members if members else None
    soaked = (now - rollout.stage_settled_ms) / 1000 if rollout.stage_settled_ms is not None else None

    def gate(name: str, label: str, value: float | None, threshold: float | None, op: str,
             ok: bool | None) -> dict[str, Any]:
        return {"name": name, "label": label, "value": value, "threshold": threshold, "op": op,
                "ok": None if value is None or threshold is None else ok}

    return [
        gate("committed", "committed share", committed_share, g.min_committed_share, ">=",
             True if committed_share is not None and committed_share >= g.min_committed_share else None),
        gate("failed", "failed share", failed_share, g.max_failed_share, "<=",
             not (members and f.failed_share_exceeded(g))),
        gate("error_rate", f"error rate ({f.samples} of {g.min_inferences} inferences)", f.error_rate,
             g.max_error_rate, "<=",
             (f.error_rate is not None and f.error_rate <= g.max_error_rate) if f.error_rate_judged(g) else None),
        gate("latency_ratio", f"p95 latency vs previous ({f.latency_judged} devices)", f.latency_ratio,
             g.max_latency_ratio, "<=", not f.latency_exceeded(g)),
        gate("drift", "drift score", f.drift_score, g.max_drift_score, "<=",
             f.drift_score is not None and g.max_drift_score is not None and f.drift_score <= g.max_drift_score),
        gate("soak", "soak time (s)", soaked, g.soak_s, ">=",
             True if soaked is not None and soaked >= g.soak_s else None),
    ]


def rollout_payload(service: RolloutService, rollout: logic.Rollout, now: int | None = None) -> dict[str, Any]:
    """The API's rollout view plus the current stage's gates (what the rollout card draws)."""
    now = now_ms() if now is None else now
    members = [d for d, s in rollout.assigned.items() if s == rollout.stage_index]
    live = rollout.state.value in LIVE
    gates = gate_values(rollout, service.observations(rollout, members), now) if live else []
    return {**rollout_view(service, rollout), "gates": gates, "live": live}


def rollouts(service: RolloutService, now: int | None = None) -> list[dict[str, Any]]:
    """Live rollouts and the newest finished ones, oldest first."""
    store = service.store
    live_ids = set(store.rollout_ids(service.fleet, LIVE))
    all_ids = store.rollout_ids(service.fleet)
    finished = [i for i in all_ids if i not in live_ids][-FINISHED_ROLLOUTS:]
    shown = [i for i in all_ids if i in live_ids or i in finished]
    return [rollout_payload(service, service.get(i), now) for i in shown]


class RolloutRelay:
    """Publishes rollout progress to the live bus, at most every ``interval_s`` and only on change.

    Runs in the server's loop after the driver's tick. It watches live rollouts plus those that
    were live at the previous look (so the final state of a finished rollout is published once),
    and does nothing while no dashboard is connected: the views cost a few queries per device.
    """

    def __init__(self, service: RolloutService, bus: LiveBus, interval_s: float = 1.0) -> None:
        self.service = service
        self.bus = bus
        self.interval_s = interval_s
        self._next = 0.0
        self._last: dict[str, str] = {}
        self._watched: set[str] = set()

    def maybe_publish(self, now_monotonic: float | None = None) -> int:
        """Publish what changed since the last call; returns how many rollouts were published."""
        clock = time.monotonic() if now_monotonic is None else now_monotonic
        if clock < self._next:
            return 0
        self._next = clock + self.interval_s
        if not self.bus.subscribers:
            self._last.clear()
            self._watched.clear()
            return 0
        try:
            live = set(self.service.store.rollout_ids(self.service.fleet, LIVE))
            published = 0
            for rollout_id in sorted(live | self._watched):
                payload = rollout_payload(self.service, self.service.get(rollout_id))
                text = json.dumps(payload, sort_keys=True)
                if self._last.get(rollout_id) != text:
                    self._last[rollout_id] = text
                    self.bus.publish(LiveKind.ROLLOUT, payload, key=f"rollout:{rollout_id}")
                    published += 1
            for gone in self._watched - live:
                self._last.pop(gone, None)
            self._watched = live
            return published
        except (StoreUnavailableError, NotFoundError) as exc:
            log.warning("rollout progress not published this time: %s", exc)
            return 0


# --- fleet and devices ----------------------------------------------------------------------------


def drift_alerts(store: Store, fleet: str) -> list[dict[str, Any]]:
    """The fleet's newest ``drift_alert`` events, newest first."""
    return store.events(fleet, limit=ALERTS, kinds=(EventKind.DRIFT_ALERT,))


def overview(ops: FleetOperations, actor: str) -> dict[str, Any]:
    """The page's snapshot: every device, rollouts with gates, drift alerts."""
    return {"fleet": ops.fleet, "actor": actor, "server_ms": now_ms(),
            "devices": ops.devices(),
            "rollouts": rollouts(ops.rollouts_service), "alerts": drift_alerts(ops.store, ops.fleet)}


def drift_history(store: Store, fleet: str, device_id: str, limit: int = DRIFT_WINDOWS) -> list[dict[str, Any]]:
    """The device's newest stored drift details as heatmap columns, oldest first."""
    return [drift_column(detail) for detail in reversed(store.drift_history(fleet, device_id, limit))]


def device_detail(ops: FleetOperations, device_id: str) -> dict[str, Any]:
    """One device: its row and desired deployment, telemetry windows and drift columns (oldest
    first), and its update history (newest first). NotFoundError for an unknown device."""
    device = ops.device(device_id)
    store, fleet = ops.store, ops.fleet
    windows = store.telemetry_windows(fleet, device_id, limit=TELEMETRY_WINDOWS)
    history = store.events(fleet, device_id, limit=UPDATE_HISTORY, kinds=UPDATE_KINDS)
    return {"device": {k: v for k, v in device.items() if k != "events"}, "telemetry": list(reversed(windows)),
            "drift": drift_history(store, fleet, device_id), "history": history}
