"""What the agent trusts: bundles and desired messages signed by a key in its trust directory.

Without a trust directory the agent runs only if ``allow_unsigned`` was set explicitly, and says so
at start-up; there is no silent insecure default.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgeops.errors import SignatureError
from edgeops.protocol import BundleSignature, Desired

log = logging.getLogger(__name__)


class Trust:
    def __init__(self, store: Any | None, allow_unsigned: bool) -> None:
        self._store = store
        self.allow_unsigned = allow_unsigned

    @classmethod
    def from_config(cls, trust_dir: Path | None, allow_unsigned: bool) -> Trust:
        if trust_dir is None:
            log.warning("no trust directory: accepting UNSIGNED bundles and desired messages (allow_unsigned)")
            return cls(None, allow_unsigned)
        from edgeops.signing import TrustStore

        return cls(TrustStore.from_directory(trust_dir), allow_unsigned)

    @property
    def required(self) -> bool:
        return self._store is not None

    def check_desired(self, desired: Desired) -> None:
        """Raise SignatureError unless the desired message is signed by a trusted key (when required)."""
        if self._store is None:
            return
        from edgeops.signing import verify_desired

        verify_desired(desired, self._store)

    def check_manifest(self, manifest_bytes: bytes, signature: BundleSignature | None) -> None:
        if self._store is None:
            return
        if signature is None:
            raise SignatureError("the bundle is not signed")
        self._store.verify(manifest_bytes, signature.signature)

    def describe(self) -> str:
        return "unsigned-allowed" if self._store is None else f"{len(self._store)} trusted key(s)"
