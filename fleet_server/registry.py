"""Content-addressed bundle storage: a bundle lives at a path derived from its digest.

Adding the same bundle twice is a no-op, and a file whose bytes no longer match its address is
detected when opened (:func:`edgeops.bundle.open_bundle` verifies every hash).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.bundle import Bundle, build_bundle, open_bundle, sha256_hex
from edgeops.errors import BundleError, ConfigError
from edgeops.manifest import Manifest
from edgeops.protocol import check_digest
from fleet_server.store import ModelRow, Store

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

    def open(self, digest: str) -> Bundle:
        return open_bundle(self.path_for(digest), expected_digest=digest)


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

    Adding the same model file under an existing name and version again is a no-op (the bundle is
    not rebuilt, so its creation time and digest stay); a different file under it is refused.
    """
    existing = store.find_model(name, version)
    if existing is not None:
        manifest = Manifest.decode(store.manifest_json(name, version))
        try:
            same = manifest.file(manifest.model_file).sha256 == sha256_hex(model_path.read_bytes())
        except OSError as exc:
            raise BundleError(f"cannot read {model_path}: {exc.strerror}") from exc
        if not same:
            raise ConfigError(f"{existing.label} already exists with different content; pick a new version")
        return existing, False
    parent = max((m for m in store.models() if m.name == name), key=lambda m: m.created_at, default=None)
    with tempfile.TemporaryDirectory(prefix="edgeops-bundle-") as tmp:
        out = Path(tmp) / "bundle.zip"
        bundle = build_bundle(
            model_path,
            out,
            name=name,
            version=version,
            reference=reference,
            created_by=created_by,
            parent_version=parent.version if parent and parent.version != version else None,
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
    )
    created = store.add_model(row, bundle.manifest_bytes.decode())
    log.info("model added name=%s version=%s digest=%s new=%s", name, version, bundle.digest[:12], created)
    return row, created
