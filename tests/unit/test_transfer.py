"""Receiving chunks: each verified on arrival, resumable after a restart, assembled exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.bundle import build_bundle
from edgeops.errors import ChecksumError, ManifestError
from edgeops.examples import TrainedExample
from edgeops.transfer import ChunkStore


@pytest.fixture
def bundle(digits: TrainedExample, tmp_path: Path):  # type: ignore[no-untyped-def]
    return build_bundle(digits.model_path, tmp_path / "b.zip", name="digits", version="1", chunk_size=2048)


def test_chunks_assemble_into_the_original_files(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ChunkStore(bundle.manifest, tmp_path / "dl")
    chunks = list(bundle.chunks())
    for index, data in reversed(chunks):
        assert store.accept(index, data)
    assert not store.accept(chunks[0][0], chunks[0][1])  # a duplicate is harmless
    assert store.complete()
    files = store.assemble(tmp_path / "out")
    for path, target in files.items():
        assert target.read_bytes() == bundle.files[path]


def test_corrupt_chunk_is_rejected_and_not_kept(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = ChunkStore(bundle.manifest, tmp_path / "dl")
    index, data = next(iter(bundle.chunks()))
    with pytest.raises(ChecksumError):
        store.accept(index, data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(ChecksumError):
        store.accept(index, data[:-1])
    with pytest.raises(ManifestError):
        store.accept(10_000, data)
    assert index in store.missing()


def test_a_restarted_store_asks_only_for_missing_chunks(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    chunks = list(bundle.chunks())
    first = ChunkStore(bundle.manifest, tmp_path / "dl")
    for index, data in chunks[::2]:
        first.accept(index, data)
    # A partial temp file from a power cut mid-write, and a corrupted chunk file, are not trusted.
    (tmp_path / "dl" / "chunk-000001.tmp").write_bytes(b"partial")
    (tmp_path / "dl" / "chunk-000002").write_bytes(b"garbage")
    second = ChunkStore(bundle.manifest, tmp_path / "dl")
    expected = sorted({i for i, _ in chunks[1::2]} | {2})
    assert second.missing() == expected
    with pytest.raises(ManifestError):
        second.assemble(tmp_path / "out")
