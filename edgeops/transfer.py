"""Receiving a bundle chunk by chunk, verifying each piece the moment it arrives.

Chunks are written to their own files (temp file, then rename), so after a disconnect, a restart
or a power cut the store knows exactly which chunks it still lacks and asks only for those.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeops.errors import ChecksumError, ManifestError
from edgeops.manifest import Manifest


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ChunkStore:
    """The chunks of one bundle received so far, kept in ``directory``."""

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        self.manifest = manifest
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._have: set[int] = set()
        for chunk in manifest.chunks:
            path = self._path(chunk.index)
            if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == chunk.sha256:
                self._have.add(chunk.index)

    def _path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:06d}"

    @property
    def total(self) -> int:
        return len(self.manifest.chunks)

    @property
    def have(self) -> int:
        return len(self._have)

    def missing(self) -> list[int]:
        return [c.index for c in self.manifest.chunks if c.index not in self._have]

    def complete(self) -> bool:
        return len(self._have) == self.total

    def accept(self, index: int, data: bytes) -> bool:
        """Verify and keep chunk ``index``; True if it was new. Raises ChecksumError on a bad chunk."""
        if not 0 <= index < self.total:
            raise ManifestError(f"chunk index {index} is outside the manifest's {self.total} chunks")
        if index in self._have:
            return False
        entry = self.manifest.chunks[index]
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ChecksumError(
                f"chunk {index} of {self.manifest.name}:{self.manifest.version} does not match its sha256 "
                f"({len(data)} bytes received, {entry.size} announced)"
            )
        path = self._path(index)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._have.add(index)
        return True

    def assemble(self, destination: Path) -> dict[str, Path]:
        """Join the chunks into the bundle's files under ``destination``, each verified and fsynced."""
        if not self.complete():
            raise ManifestError(f"cannot assemble: {len(self.missing())} chunks still missing")
        destination.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for entry in self.manifest.files:
            parts = [self._path(c.index).read_bytes() for c in self.manifest.chunks if c.file == entry.path]
            data = b"".join(parts)
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise ChecksumError(f"{entry.path} assembled from its chunks does not match its sha256")
            target = destination / entry.path
            fsync_write(target, data)
            written[entry.path] = target
        return written

    def discard(self) -> None:
        """Remove the received chunks (after assembly or when the target changes)."""
        for path in self.directory.glob("chunk-*"):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            return
