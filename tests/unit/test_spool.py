"""The telemetry spool: durable put, ack, bounded eviction, counters across restarts, corrupt files."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from device_agent.spool import SpooledMessage, SpoolStats, SpoolWriteError, TelemetrySpool

TOPIC = "edgeops/v1/default/devices/dev-1/telemetry"


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite"


def test_put_pending_ack_round_trip(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    ids = [spool.put(TOPIC, f"w{i}".encode()) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert len(spool) == 5
    pending = spool.pending()
    assert [m.payload for m in pending] == [b"w0", b"w1", b"w2", b"w3", b"w4"]
    assert all(isinstance(m, SpooledMessage) and m.topic == TOPIC and m.created_ms > 0 for m in pending)
    assert [m.id for m in spool.pending(limit=2, after_id=ids[1])] == ids[2:4]
    assert spool.ack(ids[0]) is True
    assert spool.ack(ids[0]) is False  # acked twice
    assert spool.ack(10_000) is False  # never existed
    assert [m.id for m in spool.pending()] == ids[1:]
    stats = spool.stats()
    assert stats == SpoolStats(rows=4, bytes=4 * (len(TOPIC) + 2), written_total=5, acked_total=1, evicted_total=0)
    spool.close()


def test_rows_and_counters_survive_a_restart(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    first, second = spool.put(TOPIC, b"a"), spool.put(TOPIC, b"b")
    spool.ack(first)
    spool.close()
    again = TelemetrySpool(spool_path)
    assert [(m.id, m.payload) for m in again.pending()] == [(second, b"b")]
    assert again.stats() == SpoolStats(rows=1, bytes=len(TOPIC) + 1, written_total=2, acked_total=1, evicted_total=0)
    assert again.put(TOPIC, b"c") > second  # ids keep increasing across restarts
    again.close()


def test_a_put_survives_the_process_dying_without_close(spool_path: Path) -> None:
    """The writer is killed with os._exit right after put returns: no close, no clean-up."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from device_agent.spool import TelemetrySpool
        spool = TelemetrySpool(Path({str(spool_path)!r}))
        for i in range(20):
            spool.put("t", b"payload-%d" % i)
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    spool = TelemetrySpool(spool_path)
    assert [m.payload for m in spool.pending(limit=100)] == [b"payload-%d" % i for i in range(20)]
    assert spool.stats().written_total == 20
    spool.close()


def test_oldest_rows_are_evicted_beyond_max_bytes_and_counted(
        spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    row_size = len("t") + 100
    spool = TelemetrySpool(spool_path, max_bytes=10 * row_size)
    with caplog.at_level(logging.WARNING, logger="device_agent.spool"):
        ids = [spool.put("t", bytes([i]) * 100) for i in range(25)]
    assert len(spool) == 10
    assert [m.id for m in spool.pending()] == ids[-10:]
    stats = spool.stats()
    assert (stats.rows, stats.bytes, stats.written_total, stats.evicted_total) == (10, 10 * row_size, 25, 15)
    assert spool.ack(ids[0]) is False  # evicted: already gone
    assert "evicted oldest" in caplog.text
    spool.close()
    assert TelemetrySpool(spool_path).stats().evicted_total == 15


def test_a_big_row_evicts_several_but_is_itself_kept(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path, max_bytes=1000)
    for _ in range(9):
        spool.put("t", b"x" * 99)  # 100 bytes each
    big = spool.put("t", b"y" * 1999)  # alone larger than the bound
    assert [m.id for m in spool.pending()] == [big]
    assert spool.stats().evicted_total == 9
    spool.close()


def test_garbage_file_is_moved_aside_and_the_spool_starts_empty(
        spool_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    garbage = b"this is not an sqlite database\x00\xff" * 500
    spool_path.write_bytes(garbage)
    with caplog.at_level(logging.ERROR, logger="device_agent.spool"):
        spool = TelemetrySpool(spool_path)
    assert spool.durable
    assert len(spool) == 0
    asides = list(spool_path.parent.glob("spool.sqlite.corrupt-*"))
    assert len(asides) == 1 and asides[0].read_bytes() == garbage
    assert "moved aside" in caplog.text
    ident = spool.put(TOPIC, b"after")
    spool.close()
    assert [m.id for m in TelemetrySpool(spool_path).pending()] == [ident]


def test_damaged_pages_are_detected_at_open(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    for i in range(200):
        spool.put(TOPIC, b"%d" % i * 50)
    spool.close()
    data = bytearray(spool_path.read_bytes())
    assert len(data) > 3 * 4096
    data[4096 : 3 * 4096] = b"\xa5" * (2 * 4096)  # overwrite pages 2 and 3, keep the header valid
    spool_path.write_bytes(bytes(data))
    again = TelemetrySpool(spool_path)
    assert len(again) == 0
    assert len(list(spool_path.parent.glob("spool.sqlite.corrupt-*"))) == 1
    again.put(TOPIC, b"ok")
    assert len(again) == 1
    again.close()


def test_unwritable_location_falls_back_to_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    with caplog.at_level(logging.ERROR, logger="device_agent.spool"):
        spool = TelemetrySpool(blocker / "spool.sqlite")
    assert not spool.durable
    assert "in memory" in caplog.text
    ident = spool.put(TOPIC, b"kept for this run")
    assert [m.id for m in spool.pending()] == [ident]
    spool.close()


def test_write_failure_raises_spool_write_error(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    spool._db.execute("PRAGMA query_only = ON")  # any write now fails like a read-only disk
    with pytest.raises(SpoolWriteError) as info:
        spool.put(TOPIC, b"x")
    assert info.value.code == "spool_write_failed"
    assert len(spool) == 0 and spool.stats().written_total == 0
    spool._db.execute("PRAGMA query_only = OFF")
    spool.put(TOPIC, b"x")
    assert len(spool) == 1
    spool.close()


def test_durability_settings(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    spool.put(TOPIC, b"x")
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL for puts
    spool.ack(spool.pending()[0].id)
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL for acks
    spool.close()
    relaxed = TelemetrySpool(spool_path, durability="normal")
    relaxed.put(TOPIC, b"y")
    assert relaxed._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    relaxed.close()


def test_made_in_one_thread_used_in_others(spool_path: Path) -> None:
    spool = TelemetrySpool(spool_path)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                spool.put(TOPIC, b"%d-%d" % (n, i))
        except (sqlite3.Error, SpoolWriteError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    pending = spool.pending(limit=1000)
    assert len(pending) == 200 == len(spool) == spool.stats().written_total
    for message in pending:
        assert spool.ack(message.id)
    assert spool.stats().rows == 0 and spool.stats().bytes == 0
    spool.close()


def test_rejects_a_non_positive_bound(spool_path: Path) -> None:
    with pytest.raises(ValueError):
        TelemetrySpool(spool_path, max_bytes=0)
