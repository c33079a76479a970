"""Starting and stopping EdgeOps processes (broker, server, agents) for the demo and the tests.

Children run in their own session so a terminal Ctrl-C reaches only the parent, which then stops
them in order (SIGTERM, wait, SIGKILL as a last resort): no orphans either way.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class ManagedProcess:
    """One ``python -m edgeops ...`` child with its output in a log file."""

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        max_file_bytes: int | None = None,
    ) -> None:
        """``max_file_bytes`` caps the size of any file the child writes (RLIMIT_FSIZE): a full
        disk as the kernel reports it (EFBIG), for failure tests."""
        self.name = name
        self.args = args
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # prlimit (util-linux) rather than preexec_fn: the parent may run threads.
        limit = ["prlimit", f"--fsize={max_file_bytes}"] if max_file_bytes else []
        if limit and shutil.which("prlimit") is None:
            raise RuntimeError("max_file_bytes needs the prlimit command (util-linux)")
        self.popen = subprocess.Popen(
            [*limit, sys.executable, "-m", "edgeops", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
        log.debug("started %s pid=%d: %s", name, self.popen.pid, " ".join(args))

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: a power cut, as far as the process can tell."""
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
        self._log.close()

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit status."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return int(self.popen.returncode)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def stop_all(processes: list[ManagedProcess]) -> None:
    """Stop in reverse start order (agents, then server, then broker)."""
    for proc in reversed(processes):
        proc.stop()
