"""Ed25519 signing: keys on disk, trust lists with rotation, signed desired messages and bundles."""

from __future__ import annotations

import dataclasses
import json
import stat
import zipfile
from pathlib import Path

import pytest

from edgeops.bundle import SIGNATURE_FILE, build_bundle, open_bundle
from edgeops.errors import (
    BundleError,
    ChecksumError,
    ConfigError,
    KeyFileError,
    KeyNotTrustedError,
    ManifestError,
    SignatureError,
)
from edgeops.examples import TrainedExample
from edgeops.manifest import MANIFEST_FILE
from edgeops.protocol import BundleRef, BundleSignature, Desired
from edgeops.schema import canonical_json
from edgeops.signing import (
    KeyRing,
    SigningKey,
    TrustStore,
    key_id,
    public_key_pem,
    sign_bytes,
    sign_desired,
    verify_desired,
)

CREATED = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.from_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def other_key() -> SigningKey:
    return SigningKey.from_bytes(bytes(range(1, 33)))


def test_key_id_is_16_hex_of_the_raw_public_key(key: SigningKey) -> None:
    import hashlib

    raw = key.public_key.public_bytes_raw()
    assert key.key_id == key_id(key.public_key) == key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]


def test_sign_and_verify_and_every_failure(key: SigningKey, other_key: SigningKey) -> None:
    trust = TrustStore([key.public_key])
    sig = sign_bytes(b"payload", key)
    assert sig == sign_bytes(b"payload", key)  # Ed25519 is deterministic
    assert trust.verify(b"payload", sig) == key.key_id
    with pytest.raises(SignatureError, match="does not match"):
        trust.verify(b"payloaD", sig)
    with pytest.raises(KeyNotTrustedError):
        trust.verify(b"payload", sign_bytes(b"payload", other_key))
    forged = dataclasses.replace(sign_bytes(b"payload", other_key), key_id=key.key_id)
    with pytest.raises(SignatureError):
        trust.verify(b"payload", forged)


def test_rotation_accepts_any_key_in_the_trust_list(key: SigningKey, other_key: SigningKey, tmp_path: Path) -> None:
    (tmp_path / "old.pub").write_bytes(public_key_pem(key.public_key))
    (tmp_path / "new.pub").write_bytes(other_key.public_key.public_bytes_raw())  # raw form works too
    (tmp_path / "README").write_text("not a key, ignored")
    trust = TrustStore.from_directory(tmp_path)
    assert set(trust.key_ids) == {key.key_id, other_key.key_id} and len(trust) == 2
    for k in (key, other_key):
        assert trust.verify(b"x", sign_bytes(b"x", k)) == k.key_id


def test_trust_directory_must_hold_keys(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        TrustStore.from_directory(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="no public key"):
        TrustStore.from_directory(tmp_path)
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(KeyFileError):
        TrustStore.from_directory(tmp_path)


def test_private_key_files(key: SigningKey, tmp_path: Path) -> None:
    key.save(tmp_path / "a.key")
    key.save(tmp_path / "b.key", raw=True)
    for name in ("a.key", "b.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        assert SigningKey.load(tmp_path / name).key_id == key.key_id
    assert (tmp_path / "a.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        key.save(tmp_path / "a.key")
    (tmp_path / "junk.key").write_bytes(b"short")
    with pytest.raises(KeyFileError):
        SigningKey.load(tmp_path / "junk.key")
    assert "PRIVATE" not in repr(key) and key.key_id in repr(key)


def _desired() -> Desired:
    return Desired(bundle=BundleRef(name="digits", version="2", digest="a" * 64), manifest_topic="t", issued_at=1)


def test_signed_desired(key: SigningKey, other_key: SigningKey) -> None:
    trust = TrustStore([key.public_key])
    signed = sign_desired(_desired(), key)
    assert verify_desired(Desired.decode(signed.encode()), trust) == key.key_id
    with pytest.raises(SignatureError, match="not signed"):
        verify_desired(_desired(), trust)
    with pytest.raises(SignatureError):
        verify_desired(dataclasses.replace(signed, rollback=True), trust)  # a downgrade flag cannot be added
    with pytest.raises(KeyNotTrustedError):
        verify_desired(sign_desired(_desired(), other_key), trust)


def test_key_ring(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    assert ring.active() is None and ring.list_keys() == []
    first = ring.generate("first", created_at=CREATED)
    assert first.active and first.has_private and first.created_at == CREATED
    second = ring.generate("second")
    assert not second.active  # the first key stays active until told otherwise
    with pytest.raises(ConfigError):
        ring.generate("first")
    ring.activate("second")
    active = ring.active()
    assert active is not None and active.key_id == second.key_id
    (tmp_path / "keys" / "first.key").unlink()  # retired: its public key still verifies
    listed = {k.name: k for k in ring.list_keys()}
    assert not listed["first"].has_private and listed["second"].active
    trust_dir = tmp_path / "agent-trust"
    assert len(ring.export_public(trust_dir)) == 2
    assert set(TrustStore.from_directory(trust_dir).key_ids) == {first.key_id, second.key_id}


# --- signed bundles --------------------------------------------------------------------------------


def _bundle(digits: TrainedExample, out: Path, key: SigningKey | None) -> object:
    return build_bundle(digits.model_path, out, name="digits", version="1", reference=digits.reference[:200],
                        created_at=CREATED, chunk_size=4096, signing_key=key)


def test_signed_bundle_is_deterministic_and_verifies(digits: TrainedExample, key: SigningKey, tmp_path: Path) -> None:
    a = _bundle(digits, tmp_path / "a.zip", key)
    _bundle(digits, tmp_path / "b.zip", key)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert SIGNATURE_FILE in zf.namelist()
        sig = BundleSignature.decode(zf.read(SIGNATURE_FILE))
    opened = open_bundle(tmp_path / "a.zip", expected_digest=a.digest,  # type: ignore[attr-defined]
                         trust=TrustStore([key.public_key]))
    assert opened.verified_by == key.key_id and opened.signature == sig
    assert opened.digest == a.digest  # type: ignore[attr-defined]  # the signature is outside the manifest


def test_unsigned_bundle_with_trust_is_refused(digits: TrainedExample, key: SigningKey, tmp_path: Path) -> None:
    _bundle(digits, tmp_path / "u.zip", None)
    open_bundle(tmp_path / "u.zip")
    with pytest.raises(SignatureError, match="not signed"):
        open_bundle(tmp_path / "u.zip", trust=TrustStore([key.public_key]))


def test_wrong_key(digits: TrainedExample, key: SigningKey, other_key: SigningKey, tmp_path: Path) -> None:
    _bundle(digits, tmp_path / "b.zip", other_key)
    with pytest.raises(KeyNotTrustedError):
        open_bundle(tmp_path / "b.zip", trust=TrustStore([key.public_key]))


def _rezip(src: Path, dst: Path, change: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change.get(info.filename, zin.read(info.filename)))


def test_edited_manifest_fails_the_signature(digits: TrainedExample, key: SigningKey, tmp_path: Path) -> None:
    built = _bundle(digits, tmp_path / "b.zip", key)
    manifest = json.loads(built.manifest_bytes)  # type: ignore[attr-defined]
    manifest["created_by"] = "mallory"
    _rezip(tmp_path / "b.zip", tmp_path / "t.zip", {MANIFEST_FILE: canonical_json(manifest)})
    with pytest.raises(SignatureError, match="does not match"):
        open_bundle(tmp_path / "t.zip", trust=TrustStore([key.public_key]))
    with pytest.raises(ChecksumError):
        open_bundle(tmp_path / "t.zip", expected_digest=built.digest)  # type: ignore[attr-defined]


def test_one_byte_flipped_anywhere_is_an_error(digits: TrainedExample, key: SigningKey, tmp_path: Path) -> None:
    """Every position of the file is tried (the bundle is small): no flip goes unnoticed."""
    built = _bundle(digits, tmp_path / "b.zip", key)
    data = (tmp_path / "b.zip").read_bytes()
    trust = TrustStore([key.public_key])
    target = tmp_path / "t.zip"
    step = max(1, len(data) // 3000)
    positions = sorted(set(range(0, len(data), step)) | set(range(len(data) - 200, len(data))))
    kinds: set[type] = set()
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 0x01
        target.write_bytes(bytes(flipped))
        with pytest.raises(BundleError) as info:
            open_bundle(target, expected_digest=built.digest, trust=trust)  # type: ignore[attr-defined]
        kinds.add(type(info.value))
    assert kinds <= {BundleError, ChecksumError, ManifestError, SignatureError, KeyNotTrustedError}
    assert ChecksumError in kinds


def test_truncated_signed_bundle(digits: TrainedExample, key: SigningKey, tmp_path: Path) -> None:
    _bundle(digits, tmp_path / "b.zip", key)
    data = (tmp_path / "b.zip").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 1):
        (tmp_path / "t.zip").write_bytes(data[:cut])
        with pytest.raises(BundleError):
            open_bundle(tmp_path / "t.zip", trust=TrustStore([key.public_key]))
