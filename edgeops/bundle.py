"""Bundles: one deterministic zip holding a model version, its manifest, its drift reference and
a detached signature.

Same inputs give the same bytes (fixed entry order, timestamps and permissions; Ed25519 signatures
are deterministic too), so a bundle's digest identifies its content and two builds can be compared
with ``cmp``. Any zip tool opens it. Entries are stored, not deflated: devices receive the member
files chunk by chunk (the zip is only the at-rest form), model weights hardly compress, and stored
entries make the canonical form independent of the zlib build, so :func:`open_bundle` can insist
that the file is *exactly* the canonical encoding of its verified members: one byte flipped
anywhere (a header, a timestamp, the central directory) is an error, not only in the members.

``manifest.sig`` is a :class:`edgeops.protocol.BundleSignature` over the exact ``manifest.json``
bytes. It sits outside the manifest, so the digest stays sha256(manifest bytes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeops.errors import BundleError, ChecksumError, ManifestError, SignatureError
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
from edgeops.protocol import BundleSignature
from edgeops.schema import canonical_json

if TYPE_CHECKING:
    from edgeops.signing import SigningKey, TrustStore

DRIFT_REFERENCE_FILE = "drift_reference.json"
SIGNATURE_FILE = "manifest.sig"
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
    #: The detached signature (``manifest.sig``), None for an unsigned bundle.
    signature: BundleSignature | None = None
    #: Key id that verified the signature when the bundle was opened with a trust store.
    verified_by: str | None = None

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
    signing_key: SigningKey | None = None,
    opset: int | None = None,
    parent_digest: str | None = None,
    smoke_atol: float = 1e-4,
) -> Bundle:
    """Package ``model_path`` into a bundle at ``out_path`` and return it opened.

    ``reference`` (rows of model input, e.g. calibration data) becomes the drift reference profile
    and its first rows the smoke vectors; without it the smoke vectors are seeded random inputs.
    The model is loaded once here, so a model the runtime refuses never becomes a bundle. With a
    ``signing_key`` the bundle carries ``manifest.sig``.
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
    smoke = make_smoke_test(model, {spec.name: smoke_input}, atol=smoke_atol)

    model_file = "model" + model_path.suffix.lower()
    files: dict[str, bytes] = {model_file: model_bytes}
    drift_file = None
    if reference is not None:
        rows = np.asarray(reference, dtype=np.float64)
        profile = ReferenceProfile.fit(rows.reshape(len(rows), -1))  # images: one feature per pixel
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
        opset=opset,
        parent_digest=parent_digest,
    )
    try:
        manifest.validate()
    except ValueError as exc:
        raise ManifestError(f"cannot package {name}:{version}: {exc}") from exc
    manifest_bytes = manifest.canonical_bytes()
    members = {MANIFEST_FILE: manifest_bytes, **files}
    signature = None
    if signing_key is not None:
        from edgeops.signing import sign_manifest

        signature = sign_manifest(manifest_bytes, signing_key)
        members[SIGNATURE_FILE] = signature.encode()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_bytes(_zip(members))
    tmp.replace(out_path)
    return Bundle(manifest=manifest, manifest_bytes=manifest_bytes, files=files, signature=signature)


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
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, files[path])
    return buffer.getvalue()


def open_bundle(path: Path, expected_digest: str | None = None, trust: TrustStore | None = None) -> Bundle:
    """Open and fully verify a bundle file; raise a specific BundleError subclass if anything is off.

    Checks, in order: the file is a zip (BundleError), the manifest hashes to ``expected_digest``
    (ChecksumError) and is valid (ManifestError), the signature verifies against ``trust`` when one
    is given (SignatureError; KeyNotTrustedError for an unknown key; a missing signature is an
    error too), every member matches its sha256 (ChecksumError), and the file is byte for byte the
    canonical encoding of those members (ChecksumError).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no bundle at {path}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from None
    signature: BundleSignature | None = None
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = set(zf.namelist())
            if MANIFEST_FILE not in names:
                raise ManifestError(f"{path.name}: no {MANIFEST_FILE} inside")
            manifest_bytes = zf.read(MANIFEST_FILE)
            manifest = parse_manifest(manifest_bytes, expected_digest)
            listed = {f.path for f in manifest.files}
            extra = names - listed - {MANIFEST_FILE, SIGNATURE_FILE}
            if extra:
                raise ManifestError(f"{path.name}: files not named by the manifest: {sorted(extra)}")
            if SIGNATURE_FILE in names:
                signature = _decode_signature(zf.read(SIGNATURE_FILE), path)
            verified_by = None
            if trust is not None:
                from edgeops.signing import verify_manifest

                verified_by = verify_manifest(manifest_bytes, signature, trust)
            files = {entry.path: zf.read(entry.path) for entry in manifest.files}
    except BundleError:
        raise
    except KeyError as exc:
        raise ManifestError(f"{path.name}: file listed in the manifest is missing: {exc}") from None
    # What zipfile raises on damaged headers: flag bits (encrypted), lengths, names, compression.
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError, ValueError,
            OverflowError, struct.error, UnicodeDecodeError) as exc:
        if "CRC" in str(exc):
            raise ChecksumError(f"{path.name}: a member fails its zip CRC check ({exc})") from None
        raise BundleError(f"{path.name}: not a readable bundle (truncated or corrupt zip: {exc})") from None
    for entry in manifest.files:
        data = files[entry.path]
        if len(data) != entry.size or sha256_hex(data) != entry.sha256:
            raise ChecksumError(f"{path.name}: {entry.path} does not match its sha256 in the manifest")
    members = {MANIFEST_FILE: manifest_bytes, **files}
    if signature is not None:
        members[SIGNATURE_FILE] = signature.encode()
    if _zip(members) != raw:
        raise ChecksumError(
            f"{path.name}: the file differs from the canonical encoding of its verified members "
            "(altered zip headers, timestamps, padding or directory)"
        )
    return Bundle(manifest=manifest, manifest_bytes=manifest_bytes, files=files, signature=signature,
                  verified_by=verified_by)


def _decode_signature(data: bytes, path: Path) -> BundleSignature:
    try:
        return BundleSignature.decode(data)
    except ValueError as exc:  # ProtocolError is a ValueError
        raise SignatureError(f"{path.name}: {SIGNATURE_FILE} is not a valid signature ({exc})") from None


def sign_bundle_file(path: Path, key: SigningKey) -> Bundle:
    """(Re-)sign an existing bundle in place with ``key`` (e.g. after a key rotation)."""
    bundle = open_bundle(path)
    from edgeops.signing import sign_manifest

    signature = sign_manifest(bundle.manifest_bytes, key)
    members = {MANIFEST_FILE: bundle.manifest_bytes, **bundle.files, SIGNATURE_FILE: signature.encode()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(_zip(members))
    tmp.replace(path)
    return Bundle(manifest=bundle.manifest, manifest_bytes=bundle.manifest_bytes, files=bundle.files,
                  signature=signature)


def read_drift_reference(bundle: Bundle) -> dict[str, Any] | None:
    name = bundle.manifest.drift_reference_file
    if name is None:
        return None
    loaded: dict[str, Any] = json.loads(bundle.files[name])
    return loaded
