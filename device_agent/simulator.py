"""Many simulated devices in one process: one thread, one selector, no thread per agent.

Each device is a full :class:`~device_agent.agent.Agent` (own data directory, state machine,
spool, MQTT session); only the network loop is shared (edgeops/mqtt_loop.py), so a laptop can play
a fleet of hundreds against a real broker.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from edgeops.mqtt_loop import SharedLoop

log = logging.getLogger(__name__)


def raise_open_file_limit(wanted: int) -> int:
    """Each device holds a socket and a few SQLite files: lift the soft limit towards the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    target = max(soft, min(target, max(wanted, soft)))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def device_configs(template: AgentConfig, count: int, prefix: str, data_root: Path) -> list[AgentConfig]:
    return [
        replace(template, device_id=name, data_dir=data_root / name, seed=template.seed + i)
        for i, name in ((i, f"{prefix}-{i:04d}") for i in range(1, count + 1))
    ]


class Simulator:
    def __init__(self, configs: list[AgentConfig]) -> None:
        raise_open_file_limit(64 + 8 * len(configs))
        self.loop = SharedLoop()
        self.agents = [Agent(config, loop=self.loop) for config in configs]

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        for agent in self.agents:
            agent.start()
        log.info("simulator started devices=%d", len(self.agents))
        try:
            timeout = 0.0
            while not stop.is_set():
                self.loop.run_once(timeout)
                now = time.monotonic()
                timeout = 0.5
                for agent in self.agents:
                    agent.drain_inbox()
                    timeout = min(timeout, agent.poll(now))
                if on_tick is not None:
                    on_tick()
        finally:
            for agent in self.agents:
                agent.stop()
            self.loop.close()
            log.info("simulator stopped devices=%d", len(self.agents))
