"""Bundles: deterministic bytes, complete verification, and one specific error per kind of damage."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeops.bundle import DRIFT_REFERENCE_FILE, build_bundle, open_bundle, read_drift_reference
from edgeops.errors import BundleError, ChecksumError, ManifestError, ModelLoadError, SmokeTestError
from edgeops.examples import TrainedExample
from edgeops.manifest import MANIFEST_FILE, Manifest, Runtime, digest_of, parse_manifest
from edgeops.runtime import load_model, run_smoke_test
from edgeops.schema import canonical_json

CREATED = "2026-01-01T00:00:00Z"


def _build(digits: TrainedExample, out: Path, **kw: object) -> object:
    return build_bundle(digits.model_path, out, name="digits", version="1", reference=digits.reference,
                        created_at=CREATED, chunk_size=4096, **kw)  # type: ignore[arg-type]


def test_same_inputs_give_the_same_bytes(digits: TrainedExample, tmp_path: Path) -> None:
    a = _build(digits, tmp_path / "a.zip")
    b = _build(digits, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert a.digest == b.digest  # type: ignore[attr-defined]


def test_bundle_contents_and_manifest(digits: TrainedExample, tmp_path: Path) -> None:
    built = _build(digits, tmp_path / "b.zip")
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        assert sorted(zf.namelist()) == sorted([MANIFEST_FILE, "model.onnx", DRIFT_REFERENCE_FILE])
        assert zf.read(MANIFEST_FILE) == built.manifest_bytes  # type: ignore[attr-defined]
    bundle = open_bundle(tmp_path / "b.zip", expected_digest=built.digest)  # type: ignore[attr-defined]
    m = bundle.manifest
    assert (m.name, m.version, m.runtime, m.created_at) == ("digits", "1", Runtime.ONNXRUNTIME, CREATED)
    assert m.inputs[0].shape == [None, 64]
    assert {o.name for o in m.outputs} == {"label", "probabilities"}
    assert bundle.files["model.onnx"] == digits.model_path.read_bytes()
    assert len(m.chunks) > 1 and all(c.size <= 4096 for c in m.chunks)
    assert b"".join(d for _, d in bundle.chunks()) == b"".join(bundle.files[f.path] for f in m.files)
    assert read_drift_reference(bundle)["version"] == 1  # type: ignore[index]
    assert m.smoke is not None and m.smoke.inputs[0].shape == [4, 64]


def test_smoke_vectors_pass_on_the_model_and_fail_on_another(
    digits: TrainedExample, digits_v2: TrainedExample, tmp_path: Path
) -> None:
    bundle = _build(digits, tmp_path / "b.zip")
    smoke = bundle.manifest.smoke  # type: ignore[attr-defined]
    run_smoke_test(load_model(digits.model_path, Runtime.ONNXRUNTIME), smoke)
    with pytest.raises(SmokeTestError):
        run_smoke_test(load_model(digits_v2.model_path, Runtime.ONNXRUNTIME), smoke)


def _rewrite(src: Path, dst: Path, change: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, change.get(name, zin.read(name)))


def test_tampered_model_is_a_checksum_error(digits: TrainedExample, tmp_path: Path) -> None:
    _build(digits, tmp_path / "b.zip")
    model = bytearray(digits.model_path.read_bytes())
    model[len(model) // 2] ^= 0x01
    _rewrite(tmp_path / "b.zip", tmp_path / "t.zip", {"model.onnx": bytes(model)})
    with pytest.raises(ChecksumError):
        open_bundle(tmp_path / "t.zip")


def test_edited_manifest_no_longer_matches_its_digest(digits: TrainedExample, tmp_path: Path) -> None:
    built = _build(digits, tmp_path / "b.zip")
    manifest = json.loads(built.manifest_bytes)  # type: ignore[attr-defined]
    manifest["version"] = "2"
    _rewrite(tmp_path / "b.zip", tmp_path / "t.zip", {MANIFEST_FILE: canonical_json(manifest)})
    with pytest.raises(ChecksumError):
        open_bundle(tmp_path / "t.zip", expected_digest=built.digest)  # type: ignore[attr-defined]


def test_truncated_bundle_is_a_bundle_error(digits: TrainedExample, tmp_path: Path) -> None:
    _build(digits, tmp_path / "b.zip")
    data = (tmp_path / "b.zip").read_bytes()
    (tmp_path / "t.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        open_bundle(tmp_path / "t.zip")


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelLoadError, match="INVALID_PROTOBUF"):
        build_bundle(junk, tmp_path / "b.zip", name="junk", version="1")
    with pytest.raises(BundleError, match="unknown model type"):
        build_bundle(tmp_path / "model.pt", tmp_path / "b.zip", name="junk", version="1")


def test_manifest_consistency_rules(digits: TrainedExample, tmp_path: Path) -> None:
    built = _build(digits, tmp_path / "b.zip")
    raw = json.loads(built.manifest_bytes)  # type: ignore[attr-defined]
    raw["chunks"] = raw["chunks"][:-1]
    with pytest.raises(ManifestError):
        parse_manifest(canonical_json(raw))
    raw = json.loads(built.manifest_bytes)  # type: ignore[attr-defined]
    raw["chunks"][0]["offset"] = 1
    with pytest.raises(ManifestError):
        parse_manifest(canonical_json(raw))
    raw = json.loads(built.manifest_bytes)  # type: ignore[attr-defined]
    raw["runtime"] = "pytorch"
    with pytest.raises(ManifestError):
        parse_manifest(canonical_json(raw))
    good = parse_manifest(built.manifest_bytes, digest_of(built.manifest_bytes))  # type: ignore[attr-defined]
    assert isinstance(good, Manifest)


def test_reference_rows_must_fit_the_model(digits: TrainedExample, tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        build_bundle(digits.model_path, tmp_path / "b.zip", name="d", version="1",
                     reference=np.zeros((10, 3)))
