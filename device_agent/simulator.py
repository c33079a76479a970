"""Many simulated devices per process: one thread, one selector, no thread per agent.

Each device is a full :class:`~device_agent.agent.Agent` (own data directory, state machine,
spool, MQTT session); only the network loop is shared (edgeops/mqtt_loop.py), so a laptop can play
a fleet of hundreds against a real broker.

A fleet of a thousand is more than one core can play: every update costs a device a dozen fsyncs
(its state file before each step, the staged bundle), which a real fleet pays on a thousand disks
at once and one simulator thread pays one after the other. :func:`run_simulation` therefore splits
the devices over several processes (:class:`ShardedSimulator`); each device keeps its id, seed and
data directory whatever the split.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from edgeops.errors import ConfigError
from edgeops.log_config import configure_logging
from edgeops.mqtt_loop import SharedLoop

log = logging.getLogger(__name__)

#: Devices a process plays before ``processes=0`` (auto) adds another one.
DEVICES_PER_PROCESS = 250
#: Seconds a shard gets to say ``offline`` for its devices before it is killed.
SHARD_STOP_TIMEOUT_S = 60.0


class StopFlag(Protocol):
    """A threading.Event or a multiprocessing one: all the simulator needs is to ask."""

    def is_set(self) -> bool: ...


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

    def run(self, stop: StopFlag, on_tick: Callable[[], None] | None = None) -> None:
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


def auto_processes(devices: int, cpus: int | None = None) -> int:
    """One process per DEVICES_PER_PROCESS devices, at most two per CPU, at least one.

    Two per CPU, not one: a shard spends much of an update wave waiting in fsync, and another
    shard can use the core meanwhile (1,000 devices on 2 cores: a 4-stage rollout took 64 s with
    one process, 57 with two, 41 with four; ``benches/bench_rollout.py --sim-processes N``).
    """
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, min(2 * cpus, -(-devices // DEVICES_PER_PROCESS)))


def shard(configs: list[AgentConfig], processes: int) -> list[list[AgentConfig]]:
    """Contiguous, nearly equal slices (sim-0001..0500, sim-0501..1000): a shard's log names a range."""
    if processes < 1:
        raise ConfigError("a simulation needs at least one process")
    processes = min(processes, max(1, len(configs)))
    size, extra = divmod(len(configs), processes)
    out, start = [], 0
    for i in range(processes):
        end = start + size + (1 if i < extra else 0)
        out.append(configs[start:end])
        start = end
    return out


def _run_shard(configs: list[AgentConfig], stop: StopFlag, log_level: str, parent_pid: int) -> None:
    """A shard process: its devices until the parent says stop, dies, or this process gets SIGTERM.

    SIGINT is ignored: a terminal's Ctrl-C reaches the whole process group, and the parent stops
    every shard in order. An orphaned shard (parent killed) stops by itself within a tick.
    """
    configure_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    own_stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: own_stop.set())

    class _Either:
        def is_set(self) -> bool:
            return own_stop.is_set() or stop.is_set()

    def orphaned() -> None:
        if os.getppid() != parent_pid:
            log.warning("simulator shard orphaned: stopping devices=%d", len(configs))
            own_stop.set()

    Simulator(configs).run(_Either(), on_tick=orphaned)


class ShardedSimulator:
    """The devices split over ``processes`` shard processes (spawned, each a :class:`Simulator`).

    If a shard exits on its own (an injected crash, an error), the others are stopped and
    :meth:`run` returns that shard's exit status, as a one-process simulator would have exited.
    """

    def __init__(self, configs: list[AgentConfig], processes: int) -> None:
        self.shards = shard(configs, processes)

    def run(self, stop: StopFlag) -> int:
        """Run until ``stop`` is set or a shard exits; 0, or the exit status of the shard that died."""
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads or sessions
        shard_stop = ctx.Event()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        procs = [
            ctx.Process(target=_run_shard, args=(configs, shard_stop, level, os.getpid()),
                        name=f"sim-shard-{i + 1}", daemon=False)
            for i, configs in enumerate(self.shards)
        ]
        for proc, configs in zip(procs, self.shards, strict=True):
            proc.start()
            log.info("simulator shard started shard=%s pid=%s devices=%d first=%s last=%s", proc.name, proc.pid,
                     len(configs), configs[0].device_id, configs[-1].device_id)
        status = 0
        try:
            while not stop.is_set():
                multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
                dead = [p for p in procs if p.exitcode is not None]
                if dead:
                    status = next((p.exitcode for p in dead if p.exitcode), 0) or 0
                    for p in dead:
                        log.error("simulator shard exited shard=%s pid=%s exit_code=%s: stopping the others",
                                  p.name, p.pid, p.exitcode)
                    break
        finally:
            shard_stop.set()
            deadline = time.monotonic() + SHARD_STOP_TIMEOUT_S
            for p in procs:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    log.warning("simulator shard did not stop in time; killing it shard=%s pid=%s", p.name, p.pid)
                    p.kill()
                    p.join()
        return status if status >= 0 else 128 - status


def run_simulation(configs: list[AgentConfig], processes: int, stop: StopFlag) -> int:
    """Play ``configs`` in this process (``processes == 1``) or split over shard processes
    (``0`` = :func:`auto_processes`). Returns the exit status for the command line."""
    count = auto_processes(len(configs)) if processes == 0 else processes
    if count == 1:
        Simulator(configs).run(stop)
        return 0
    return ShardedSimulator(configs, count).run(stop)
