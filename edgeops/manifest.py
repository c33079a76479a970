"""The bundle manifest: what a model version is, byte for byte, and how it travels.

The manifest is published as canonical JSON (:func:`edgeops.schema.canonical_json`) and a bundle's
digest is the sha256 of exactly those bytes, so the digest pins the model, the drift reference, the
smoke vectors and the transfer chunks at once. Receivers hash the bytes they received, never a
re-encoding.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from edgeops.errors import ChecksumError, ConfigError, ManifestError
from edgeops.protocol import ID_PATTERN, BundleRef
from edgeops.schema import MaxLen, Message, Pattern, Range, Record, canonical_json

SHA256_PATTERN = r"[0-9a-f]{64}"
FILE_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
DTYPE_PATTERN = r"float16|float32|float64|int8|uint8|int16|int32|int64|bool"
#: Transfer chunk size: small enough for any broker's message limit and a Pi's memory.
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 1024 * 1024
MANIFEST_FILE = "manifest.json"


class Runtime(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TFLITE = "tflite"


Sha256 = Annotated[str, Pattern(SHA256_PATTERN)]
FileName = Annotated[str, Pattern(FILE_PATTERN)]
DType = Annotated[str, Pattern(DTYPE_PATTERN)]
Size = Annotated[int, Range(ge=0)]
TensorName = Annotated[str, MaxLen(256)]


@dataclass(frozen=True)
class TensorSpec(Record):
    """A model input or output; ``None`` in the shape is a free (batch) dimension."""

    name: TensorName
    dtype: DType
    shape: Annotated[list[int | None], MaxLen(8)]


@dataclass(frozen=True)
class FileEntry(Record):
    path: FileName
    sha256: Sha256
    size: Size


@dataclass(frozen=True)
class ChunkEntry(Record):
    """Transfer chunk ``index``: ``size`` bytes of ``file`` starting at ``offset``."""

    index: Size
    file: FileName
    offset: Size
    size: Annotated[int, Range(ge=1, le=MAX_CHUNK_SIZE)]
    sha256: Sha256


@dataclass(frozen=True)
class SmokeTensor(Record):
    name: TensorName
    dtype: DType
    shape: Annotated[list[int], MaxLen(8)]
    data: Annotated[list[float], MaxLen(65536)]


@dataclass(frozen=True)
class SmokeTest(Record):
    """Inputs with the outputs they must reproduce, checked on the device before a model serves."""

    inputs: list[SmokeTensor]
    outputs: list[SmokeTensor]
    atol: Annotated[float, Range(ge=0)] = 1e-4
    rtol: Annotated[float, Range(ge=0)] = 1e-3


@dataclass(frozen=True)
class Manifest(Message):
    """Everything a device needs to know about a model version before trusting its bytes."""

    name: Annotated[str, Pattern(ID_PATTERN)]
    version: Annotated[str, Pattern(VERSION_PATTERN)]
    runtime: Runtime
    model_file: FileName
    inputs: Annotated[list[TensorSpec], MaxLen(64)]
    outputs: Annotated[list[TensorSpec], MaxLen(64)]
    files: Annotated[list[FileEntry], MaxLen(16)]
    chunk_size: Annotated[int, Range(ge=1, le=MAX_CHUNK_SIZE)]
    chunks: Annotated[list[ChunkEntry], MaxLen(100_000)]
    created_at: Annotated[str, Pattern(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")]
    created_by: Annotated[str, MaxLen(256)] = ""
    parent_version: str | None = None
    drift_reference_file: FileName | None = None
    smoke: SmokeTest | None = None
    quantization: dict[str, Any] | None = None
    validation: dict[str, float] | None = None
    #: ONNX default-domain opset of the packaged model (None for TFLite).
    opset: Annotated[int, Range(ge=1, le=1000)] | None = None
    #: Digest of the bundle this version was derived from (lineage), if any.
    parent_digest: Annotated[str, Pattern(SHA256_PATTERN)] | None = None

    def canonical_bytes(self) -> bytes:
        """The exact bytes that are published, stored as manifest.json and hashed into the digest."""
        return canonical_json(self.to_dict())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"manifest of {self.name}:{self.version} lists no file {path!r}")

    def check_consistency(self) -> None:
        """Cross-field rules the per-field schema cannot express; raises ManifestError."""
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths) or MANIFEST_FILE in paths:
            raise ManifestError("manifest files must be unique and must not include manifest.json")
        self.file(self.model_file)
        if self.drift_reference_file is not None:
            self.file(self.drift_reference_file)
        expected_index = 0
        for entry in self.files:
            offset = 0
            for chunk in (c for c in self.chunks if c.file == entry.path):
                if chunk.index != expected_index or chunk.offset != offset or chunk.size > self.chunk_size:
                    raise ManifestError(f"chunk {chunk.index} of {entry.path} is out of order or oversized")
                expected_index += 1
                offset += chunk.size
            if offset != entry.size:
                raise ManifestError(f"chunks of {entry.path} cover {offset} of {entry.size} bytes")
        if expected_index != len(self.chunks):
            raise ManifestError("manifest lists chunks of files it does not name")


def parse_model_ref(ref: str) -> tuple[str, str]:
    """``NAME:VERSION`` (how users name a model version everywhere) -> (name, version); ConfigError otherwise."""
    name, sep, version = ref.partition(":")
    if not sep or not name or not version:
        raise ConfigError(f"expected NAME:VERSION, got {ref!r}")
    return name, version


def digest_of(manifest_bytes: bytes) -> str:
    """The bundle digest: sha256 of the canonical manifest bytes."""
    return hashlib.sha256(manifest_bytes).hexdigest()


def parse_manifest(manifest_bytes: bytes, expected_digest: str | None = None) -> Manifest:
    """Verify (when a digest is expected) and decode received manifest bytes.

    The digest is checked first, on the raw bytes: a manifest that does not hash to what the
    desired message announced is never parsed further.
    """
    if expected_digest is not None and digest_of(manifest_bytes) != expected_digest:
        raise ChecksumError(f"manifest does not hash to the announced digest {expected_digest[:12]}…")
    try:
        manifest = Manifest.decode(manifest_bytes)
    except ValueError as exc:  # ProtocolError is a ValueError
        raise ManifestError(f"invalid manifest: {exc}") from exc
    manifest.check_consistency()
    return manifest


def bundle_ref(manifest: Manifest, digest: str) -> BundleRef:
    return BundleRef(name=manifest.name, version=manifest.version, digest=digest)
