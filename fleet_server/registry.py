"""Content-addressed bundle storage: a bundle lives at a path derived from its digest.

Adding the same bundle twice is a no-op, and a file whose bytes no longer match its address is
detected when opened (:func:`edgeops.bundle.open_bundle` verifies every hash).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeops.bundle import Bundle, build_bundle, open_bundle, sha256_hex
from edgeops.errors import BundleError, ConfigError, ValidationGateError
from edgeops.manifest import Manifest, Runtime
from edgeops.protocol import check_digest
from edgeops.schema import canonical_json
from fleet_server.model_import import ModelInfo, inspect_model
from fleet_server.quantize import QuantizeOptions, QuantMode, quantize_onnx
from fleet_server.store import ModelRow, Store
from fleet_server.validate import DEFAULT_MAX_DROP, ValidationReport, ValidationSet, release_gate, validate

if TYPE_CHECKING:
    from edgeops.signing import SigningKey, TrustStore

log = logging.getLogger(__name__)


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / "sha256" / digest[:2] / f"{digest}.bundle"

    def put(self, bundle_file: Path, bundle: Bundle) -> Path:
        target = self.path_for(bundle.digest)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(bundle_file, tmp)
            tmp.replace(target)
        return target

    def open(self, digest: str, trust: TrustStore | None = None) -> Bundle:
        """The verified bundle; with ``trust`` its signature must verify too."""
        return open_bundle(self.path_for(digest), expected_digest=digest, trust=trust)


@dataclass
class AddResult:
    """What packaging a model did: the stored row, whether it is new, and what was measured."""

    row: ModelRow
    created: bool
    info: ModelInfo | None = None
    report: ValidationReport | None = None
    notes: list[str] = field(default_factory=list)


def _recipe_json(quantize: QuantizeOptions | None, max_drop: float, force: bool) -> str:
    options: dict[str, Any] = {"quantize": quantize.to_dict() if quantize else {"mode": QuantMode.NONE.value}}
    if quantize is not None and quantize.mode is not QuantMode.NONE:
        options["max_accuracy_drop"] = max_drop
        options["force"] = force
    return canonical_json(options).decode()


def add_model(
    store: Store,
    registry: Registry,
    model_path: Path,
    *,
    name: str,
    version: str,
    reference: np.ndarray | None = None,
    created_by: str = "",
    **build_options: Any,
) -> tuple[ModelRow, bool]:
    """Package a model file into the registry and record it; returns the row and whether it is new.

    Keyword options are those of :func:`package_model` (quantization, validation, signing) and,
    beyond those, of :func:`edgeops.bundle.build_bundle`.
    """
    result = package_model(store, registry, model_path, name=name, version=version, reference=reference,
                           created_by=created_by, **build_options)
    return result.row, result.created


def package_model(
    store: Store,
    registry: Registry,
    model_path: Path,
    *,
    name: str,
    version: str,
    reference: np.ndarray | None = None,
    created_by: str = "",
    quantize: QuantizeOptions | None = None,
    calibration: np.ndarray | None = None,
    validation_set: ValidationSet | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    force: bool = False,
    signing_key: SigningKey | None = None,
    latency_repeats: int = 200,
    progress: Callable[[str], None] | None = None,
    **build_options: Any,
) -> AddResult:
    """Import, (quantize, validate, gate), package, sign and record a model version.

    * Adding the same model file with the same options under an existing name and version again
      is a no-op (the bundle is not rebuilt, so its creation time and digest stay); different
      content or options under it are refused: versions are immutable.
    * ``quantize`` (ONNX only) runs :func:`fleet_server.quantize.quantize_onnx`; static
      quantization calibrates on ``calibration`` (default: ``reference``). A quantized model needs
      a ``validation_set`` for the release gate, unless ``force``.
    * The drift reference is profiled from ``reference``, else from ``calibration``.
    * ``signing_key`` signs the bundle (``manifest.sig``).
    """
    def step(text: str) -> None:
        if progress is not None:
            progress(text)

    try:
        source_bytes = model_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {model_path}: {exc.strerror}") from exc
    source_sha = sha256_hex(source_bytes)
    quantizing = quantize is not None and quantize.mode is not QuantMode.NONE
    recipe_json = _recipe_json(quantize, max_accuracy_drop, force)
    existing = store.find_model(name, version)
    if existing is not None:
        if existing.source_sha256 is not None:
            same = existing.source_sha256 == source_sha and (existing.recipe_json or recipe_json) == recipe_json
        else:  # recorded before sources were tracked: the packaged file is the source
            manifest = Manifest.decode(store.manifest_json(name, version))
            same = manifest.file(manifest.model_file).sha256 == source_sha and not quantizing
        if not same:
            raise ConfigError(f"{existing.label} already exists with different content; pick a new version")
        return AddResult(existing, False)

    step(f"importing {model_path.name}")
    info = inspect_model(model_path)
    notes: list[str] = []
    if reference is None and calibration is not None:
        reference = calibration
    parent = max((m for m in store.models() if m.name == name), key=lambda m: m.created_at, default=None)
    report: ValidationReport | None = None
    with tempfile.TemporaryDirectory(prefix="edgeops-bundle-") as tmp:
        packaged = model_path
        quantization: dict[str, Any] | None = None
        opset = info.opset if info.runtime is Runtime.ONNXRUNTIME else None
        if quantizing:
            assert quantize is not None
            step(f"quantizing ({quantize.mode.value}{', per-channel' if quantize.per_channel else ''})")
            result = quantize_onnx(model_path, Path(tmp) / f"{model_path.stem}.int8.onnx", quantize,
                                   calibration if calibration is not None else reference)
            packaged = result.path
            notes.extend(result.notes)
            quantization = {**result.recipe, "source_sha256": source_sha, "source_size_bytes": len(source_bytes)}
            opset = int(result.recipe.get("opset_upgraded_to", opset or 0)) or None
            if validation_set is None:
                if not force:
                    raise ValidationGateError(
                        "a quantized model needs a validation set for the release gate (--validation val.npz "
                        "with arrays X and y), or --force to package it unvalidated"
                    )
                notes.append("packaged without validation (--force)")
                quantization["gate"] = "skipped (forced, no validation set)"
        validation: dict[str, float] | None = None
        if validation_set is not None:
            step(f"validating on {len(validation_set.x)} rows (accuracy, size, latency at batch 1 and 32)")
            report = validate(model_path, packaged, validation_set, latency_repeats=latency_repeats)
            validation = report.to_manifest()
            if quantizing:
                assert quantization is not None
                validation["max_drop_points"] = float(max_accuracy_drop)
                warning = release_gate(report, max_accuracy_drop, force=force)
                quantization["gate"] = warning or f"passed (drop <= {max_accuracy_drop:g} point)"
                if warning:
                    notes.append(warning)
        step("packaging the bundle" + (" (signed)" if signing_key is not None else ""))
        out = Path(tmp) / "bundle.zip"
        build_options.setdefault("smoke_atol", 1e-3 if quantizing else 1e-4)
        bundle = build_bundle(
            packaged,
            out,
            name=name,
            version=version,
            reference=reference,
            created_by=created_by,
            parent_version=parent.version if parent and parent.version != version else None,
            parent_digest=parent.digest if parent and parent.version != version else None,
            quantization=quantization,
            validation=validation,
            signing_key=signing_key,
            opset=opset,
            **build_options,
        )
        registry.put(out, bundle)
    manifest = bundle.manifest
    row = ModelRow(
        name=name,
        version=version,
        digest=bundle.digest,
        runtime=manifest.runtime.value,
        size_bytes=manifest.total_size,
        created_at=manifest.created_at,
        parent_version=manifest.parent_version,
        parent_digest=manifest.parent_digest,
        created_by=created_by,
        source_sha256=source_sha,
        recipe_json=recipe_json,
        signed_by=bundle.signature.signature.key_id if bundle.signature else None,
    )
    created = store.add_model(row, bundle.manifest_bytes.decode())
    log.info("model added name=%s version=%s digest=%s new=%s", name, version, bundle.digest[:12], created)
    return AddResult(row, created, info, report, notes)
