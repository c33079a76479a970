"""Ed25519 signatures for bundles and desired messages, shared by the fleet server and the agent.

* A :class:`SigningKey` is the private half; it lives on the server (``{home}/keys/NAME.key``,
  PEM PKCS#8, mode 0600) and signs the exact manifest bytes of a bundle and the canonical JSON of a
  desired message.
* A :class:`TrustStore` is what a device is provisioned with: a set of public keys. It accepts a
  signature made by *any* key it holds, which is how keys rotate: provision the new public key
  next to the old one, switch the server's active key, retire the old public key later.
* :class:`KeyRing` is the server's key directory: generate, list, activate, export public keys.

A key is named on the wire by :func:`key_id`: the first 16 hex digits of the sha256 of its raw
32-byte public key. Signatures are deterministic (Ed25519), so a bundle signed twice with the same
key is byte-identical.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgeops.errors import ConfigError, KeyFileError, KeyNotTrustedError, NotFoundError, SignatureError
from edgeops.protocol import BundleSignature, Desired, Signature
from edgeops.schema import canonical_json

ALGORITHM = "ed25519"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
#: Public key files a trust directory may hold.
PUBLIC_SUFFIXES = (PUBLIC_SUFFIX, ".pem")
RAW_KEY_BYTES = 32
KEY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY_NAME_RE = re.compile(KEY_NAME_PATTERN)
_RING_FILE = "keyring.json"

PublicKeyLike = Ed25519PublicKey | bytes


def _raw_public(key: PublicKeyLike) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, bytes) and len(key) == RAW_KEY_BYTES:
        return key
    raise KeyFileError(f"expected an Ed25519 public key or its {RAW_KEY_BYTES} raw bytes")


def key_id(public_key: PublicKeyLike) -> str:
    """16 lowercase hex digits: the start of sha256(raw 32-byte public key)."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def public_key_pem(public_key: PublicKeyLike) -> bytes:
    """SubjectPublicKeyInfo PEM, the format of ``*.pub`` files."""
    key = public_key if isinstance(public_key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(
        _raw_public(public_key)
    )
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_public_key(data: bytes, source: str = "public key") -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or the 32 raw bytes."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"{source}: not a readable PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source}: a {type(key).__name__}, not an Ed25519 public key")
        return key
    if len(data) == RAW_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    raise KeyFileError(f"{source}: neither a PEM public key nor {RAW_KEY_BYTES} raw bytes")


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from None
    return parse_public_key(data, str(path))


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


class SigningKey:
    """The private half of an Ed25519 key pair."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "private key") -> SigningKey:
        """From PEM (PKCS#8, unencrypted) or the 32 raw private bytes."""
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as exc:
                raise KeyFileError(f"{source}: not a readable unencrypted PEM private key ({exc})") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise KeyFileError(f"{source}: a {type(key).__name__}, not an Ed25519 private key")
            return cls(key)
        if len(data) == RAW_KEY_BYTES:
            return cls(Ed25519PrivateKey.from_private_bytes(data))
        raise KeyFileError(f"{source}: neither a PEM private key nor {RAW_KEY_BYTES} raw bytes")

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
        return cls.from_bytes(data, str(path))

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def private_raw(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def save(self, path: Path, *, raw: bool = False) -> None:
        """Write the private key (PEM unless ``raw``) with mode 0600; never overwrites."""
        _write_private(path, self.private_raw() if raw else self.private_pem())

    def save_public(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(public_key_pem(self.public_key))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey(key_id={self.key_id})"


def sign_bytes(data: bytes, key: SigningKey) -> Signature:
    """A detached signature over ``data``, naming the key that made it."""
    value = base64.b64encode(key.sign(data)).decode("ascii")
    return Signature(algorithm=ALGORITHM, key_id=key.key_id, value=value)


class TrustStore:
    """The public keys a verifier accepts; a signature by any of them verifies (key rotation)."""

    def __init__(self, keys: Iterable[PublicKeyLike] = ()) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_directory(cls, directory: Path, extra: Iterable[PublicKeyLike] = ()) -> TrustStore:
        """Every ``*.pub`` / ``*.pem`` public key file in ``directory`` plus ``extra`` keys.

        A directory without any key is refused: a verifier that trusts nobody would reject every
        bundle, which is never what provisioning meant.
        """
        if not directory.is_dir():
            raise KeyFileError(f"trust directory {directory} does not exist")
        store = cls(extra)
        for path in sorted(directory.iterdir()):
            if path.suffix in PUBLIC_SUFFIXES and path.is_file():
                store.add(load_public_key(path))
        if not store:
            raise KeyFileError(f"trust directory {directory} holds no public key (*.pub)")
        return store

    def add(self, key: PublicKeyLike) -> str:
        public = key if isinstance(key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(_raw_public(key))
        ident = key_id(public)
        self._keys[ident] = public
        return ident

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, ident: object) -> bool:
        return ident in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self.key_ids)

    def verify(self, data: bytes, signature: Signature) -> str:
        """Return the key id that signed ``data``, or raise SignatureError (KeyNotTrustedError)."""
        if signature.algorithm != ALGORITHM:
            raise SignatureError(f"unsupported signature algorithm {signature.algorithm!r}")
        public = self._keys.get(signature.key_id)
        if public is None:
            raise KeyNotTrustedError(
                f"signed by key {signature.key_id}, which is not in the trust list "
                f"({', '.join(self.key_ids) or 'empty'})"
            )
        try:
            raw = base64.b64decode(signature.value, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("signature value is not valid base64") from None
        try:
            public.verify(raw, data)
        except InvalidSignature:
            raise SignatureError(f"signature by key {signature.key_id} does not match the signed bytes") from None
        return signature.key_id


# --- what is signed ------------------------------------------------------------------------------


def sign_manifest(manifest_bytes: bytes, key: SigningKey) -> BundleSignature:
    """The detached bundle signature: over the exact manifest bytes, so over the digest too."""
    return BundleSignature(signature=sign_bytes(manifest_bytes, key))


def verify_manifest(manifest_bytes: bytes, signature: BundleSignature | None, trust: TrustStore) -> str:
    if signature is None:
        raise SignatureError("the bundle is not signed (no manifest.sig)")
    return trust.verify(manifest_bytes, signature.signature)


def desired_signed_bytes(desired: Desired) -> bytes:
    """What a desired message's signature covers: its canonical JSON without ``signature``."""
    data = desired.to_dict()
    data.pop("signature", None)
    return canonical_json(data)


def sign_desired(desired: Desired, key: SigningKey) -> Desired:
    return dataclasses.replace(desired, signature=sign_bytes(desired_signed_bytes(desired), key))


def verify_desired(desired: Desired, trust: TrustStore) -> str:
    """Return the signing key id, or raise SignatureError when unsigned, untrusted or altered."""
    if desired.signature is None:
        raise SignatureError(f"desired message for {desired.bundle.label} is not signed")
    return trust.verify(desired_signed_bytes(desired), desired.signature)


# --- the server's key directory ------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    """One key of a key ring as ``edgeops keys list`` shows it."""

    name: str
    key_id: str
    created_at: str
    has_private: bool
    active: bool


def check_key_name(name: str) -> str:
    if not _KEY_NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid key name {name!r}: expected {KEY_NAME_PATTERN}")
    return name


class KeyRing:
    """``{home}/keys``: ``NAME.key`` (private, 0600), ``NAME.pub`` (public) and ``keyring.json``.

    ``keyring.json`` records which key signs (``active``) and when each key was made. Public keys
    whose private half is gone (retired, or imported from elsewhere) still verify.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _meta(self) -> dict[str, object]:
        path = self.directory / _RING_FILE
        if not path.exists():
            return {"active": None, "created": {}}
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"cannot read {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise KeyFileError(f"{path}: expected a JSON object")
        return loaded

    def _save_meta(self, meta: dict[str, object]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / _RING_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted({p.stem for p in self.directory.iterdir() if p.suffix in (PRIVATE_SUFFIX, PUBLIC_SUFFIX)})

    def generate(self, name: str | None = None, *, activate: bool | None = None, created_at: str = "") -> KeyInfo:
        """Make a new key pair. It becomes active when asked to, or when no key is active yet."""
        key = SigningKey.generate()
        name = check_key_name(name or f"key-{key.key_id[:8]}")
        if name in self.names():
            raise ConfigError(f"a key named {name!r} already exists in {self.directory}")
        key.save(self.directory / f"{name}{PRIVATE_SUFFIX}")
        key.save_public(self.directory / f"{name}{PUBLIC_SUFFIX}")
        meta = self._meta()
        created = dict(meta.get("created") or {})  # type: ignore[call-overload]
        created[name] = created_at
        meta["created"] = created
        if activate or (activate is None and self.active_name() is None):
            meta["active"] = name
        self._save_meta(meta)
        return self.info(name)

    def active_name(self) -> str | None:
        name = self._meta().get("active")
        if isinstance(name, str) and (self.directory / f"{name}{PRIVATE_SUFFIX}").is_file():
            return name
        return None

    def activate(self, name: str) -> KeyInfo:
        if not (self.directory / f"{check_key_name(name)}{PRIVATE_SUFFIX}").is_file():
            raise NotFoundError(f"no private key named {name!r} in {self.directory}")
        meta = self._meta()
        meta["active"] = name
        self._save_meta(meta)
        return self.info(name)

    def active(self) -> SigningKey | None:
        """The key that signs new bundles, or None when the ring has none."""
        name = self.active_name()
        return None if name is None else SigningKey.load(self.directory / f"{name}{PRIVATE_SUFFIX}")

    def public_key(self, name: str) -> Ed25519PublicKey:
        pub = self.directory / f"{name}{PUBLIC_SUFFIX}"
        if pub.is_file():
            return load_public_key(pub)
        priv = self.directory / f"{name}{PRIVATE_SUFFIX}"
        if priv.is_file():
            return SigningKey.load(priv).public_key
        raise NotFoundError(f"no key named {name!r} in {self.directory}")

    def info(self, name: str) -> KeyInfo:
        created = self._meta().get("created") or {}
        return KeyInfo(
            name=name,
            key_id=key_id(self.public_key(name)),
            created_at=str(created.get(name, "")) if isinstance(created, dict) else "",
            has_private=(self.directory / f"{name}{PRIVATE_SUFFIX}").is_file(),
            active=name == self.active_name(),
        )

    def list_keys(self) -> list[KeyInfo]:
        return [self.info(n) for n in self.names()]

    def trust_store(self) -> TrustStore:
        """Every public key of the ring (what the server itself verifies against)."""
        return TrustStore(self.public_key(n) for n in self.names())

    def export_public(self, destination: Path) -> list[Path]:
        """Copy every public key into ``destination`` (an agent's trust directory)."""
        destination.mkdir(parents=True, exist_ok=True)
        written = []
        for name in self.names():
            path = destination / f"{name}{PUBLIC_SUFFIX}"
            path.write_bytes(public_key_pem(self.public_key(name)))
            written.append(path)
        return written
