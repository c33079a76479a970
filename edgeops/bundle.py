"""Bundles: one deterministic zip holding a model version, its manifest and its drift reference.

Same inputs give the same bytes (fixed entry order, timestamps and permissions), so a bundle's
digest identifies its content and two builds can be compared with ``cmp``. Any zip tool opens it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import BundleError, ChecksumError, ManifestError
from edgeops.manifest import (
    DEFAULT_CHUNK_SIZE,
    MANIFEST_FILE,
    ChunkEntry,
    FileEntry,
    Manifest,
    Runtime,
    digest_of,
    parse_manifest,
)
from edgeops.schema import canonical_json

DRIFT_REFERENCE_FILE = "drift_reference.json"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_MODEL_SUFFIXES = {".onnx": Runtime.ONNXRUNTIME, ".tflite": Runtime.TFLITE}
#: How many reference rows become smoke vectors.
SMOKE_ROWS = 4


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle."""

    manifest: Manifest
    manifest_bytes: bytes
    files: Mapping[str, bytes]

    @property
    def digest(self) -> str:
        return digest_of(self.manifest_bytes)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        """The transfer chunks in index order."""
        for chunk in self.manifest.chunks:
            data = self.files[chunk.file]
            yield chunk.index, data[chunk.offset : chunk.offset + chunk.size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def runtime_for(model_path: Path) -> Runtime:
    runtime = _MODEL_SUFFIXES.get(model_path.suffix.lower())
    if runtime is None:
        raise BundleError(f"{model_path.name}: unknown model type (expected .onnx or .tflite)")
    return runtime


def _entries(path: str, data: bytes, chunk_size: int, first_index: int) -> list[ChunkEntry]:
    return [
        ChunkEntry(
            index=first_index + i,
            file=path,
            offset=offset,
            size=len(data[offset : offset + chunk_size]),
            sha256=sha256_hex(data[offset : offset + chunk_size]),
        )
        for i, offset in enumerate(range(0, len(data), chunk_size))
    ]


def utc_timestamp(when: dt.datetime | None = None) -> str:
    """ISO-8601 UTC to the second, the only time format in manifests."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_bundle(
    model_path: Path,
    out_path: Path,
    *,
    name: str,
    version: str,
    reference: np.ndarray | None = None,
    created_at: str | None = None,
    created_by: str = "",
    parent_version: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    quantization: dict[str, Any] | None = None,
    validation: dict[str, float] | None = None,
    intra_op_threads: int = 1,
) -> Bundle:
    """Package ``model_path`` into a bundle at ``out_path`` and return it opened.

    ``reference`` (rows of model input, e.g. calibration data) becomes the drift reference profile
    and its first rows the smoke vectors; without it the smoke vectors are seeded random inputs.
    The model is loaded once here, so a model the runtime refuses never becomes a bundle.
    """
    from edgeops.drift import ReferenceProfile
    from edgeops.runtime import load_model, make_smoke_test

    runtime = runtime_for(model_path)
    try:
        model_bytes = model_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {model_path}: {exc.strerror}") from exc
    model = load_model(model_path, runtime, intra_op_threads)
    if len(model.inputs) != 1:
        raise BundleError(f"{model_path.name}: only single-input models are supported, it has {len(model.inputs)}")
    spec = model.inputs[0]
    smoke_input = _smoke_input(spec.shape, spec.dtype, reference)
    smoke = make_smoke_test(model, {spec.name: smoke_input})

    model_file = "model" + model_path.suffix.lower()
    files: dict[str, bytes] = {model_file: model_bytes}
    drift_file = None
    if reference is not None:
        profile = ReferenceProfile.fit(np.asarray(reference, dtype=np.float64))
        files[DRIFT_REFERENCE_FILE] = canonical_json(profile.to_dict())
        drift_file = DRIFT_REFERENCE_FILE

    chunks: list[ChunkEntry] = []
    for path, data in files.items():
        chunks.extend(_entries(path, data, chunk_size, len(chunks)))
    manifest = Manifest(
        name=name,
        version=version,
        runtime=runtime,
        model_file=model_file,
        inputs=model.inputs,
        outputs=model.outputs,
        files=[FileEntry(path=p, sha256=sha256_hex(d), size=len(d)) for p, d in files.items()],
        chunk_size=chunk_size,
        chunks=chunks,
        created_at=created_at or utc_timestamp(),
        created_by=created_by,
        parent_version=parent_version,
        drift_reference_file=drift_file,
        smoke=smoke,
        quantization=quantization,
        validation=validation,
    )
    try:
        manifest.validate()
    except ValueError as exc:
        raise ManifestError(f"cannot package {name}:{version}: {exc}") from exc
    manifest_bytes = manifest.canonical_bytes()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_bytes(_zip({MANIFEST_FILE: manifest_bytes, **files}))
    tmp.replace(out_path)
    return Bundle(manifest=manifest, manifest_bytes=manifest_bytes, files=files)


def _smoke_input(shape: list[int | None], dtype: str, reference: np.ndarray | None) -> np.ndarray:
    if reference is not None and reference.ndim == len(shape):
        rows = np.asarray(reference[:SMOKE_ROWS], dtype=dtype)
        if all(d is None or d == s for d, s in zip(shape[1:], rows.shape[1:], strict=True)):
            return rows
        raise BundleError(f"reference rows of shape {list(reference.shape)} do not fit model input {shape}")
    concrete = [SMOKE_ROWS if d is None else d for d in shape]
    rng = np.random.default_rng(0)
    return rng.standard_normal(concrete).astype(dtype)


def _zip(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, files[path], compresslevel=9)
    return buffer.getvalue()


def open_bundle(path: Path, expected_digest: str | None = None) -> Bundle:
    """Open and fully verify a bundle file; raise a specific BundleError subclass if anything is off."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if MANIFEST_FILE not in names:
                raise ManifestError(f"{path.name}: no {MANIFEST_FILE} inside")
            manifest_bytes = zf.read(MANIFEST_FILE)
            manifest = parse_manifest(manifest_bytes, expected_digest)
            listed = {f.path for f in manifest.files}
            if names - listed - {MANIFEST_FILE}:
                raise ManifestError(f"{path.name}: files not named by the manifest: {sorted(names - listed)}")
            files = {entry.path: zf.read(entry.path) for entry in manifest.files}
    except FileNotFoundError:
        raise BundleError(f"no bundle at {path}") from None
    except KeyError as exc:
        raise ManifestError(f"{path.name}: file listed in the manifest is missing: {exc}") from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise BundleError(f"{path.name}: not a readable bundle (truncated or corrupt zip: {exc})") from None
    for entry in manifest.files:
        data = files[entry.path]
        if len(data) != entry.size or sha256_hex(data) != entry.sha256:
            raise ChecksumError(f"{path.name}: {entry.path} does not match its sha256 in the manifest")
    return Bundle(manifest=manifest, manifest_bytes=manifest_bytes, files=files)


def read_drift_reference(bundle: Bundle) -> dict[str, Any] | None:
    name = bundle.manifest.drift_reference_file
    if name is None:
        return None
    loaded: dict[str, Any] = json.loads(bundle.files[name])
    return loaded
