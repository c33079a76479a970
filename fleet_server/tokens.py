"""API tokens: bearer secrets for the HTTP API, stored only as their sha256.

A token is a random secret (``eo_`` + 43 URL-safe characters, 256 bits) shown once when it is
created. The store keeps its sha256, never the secret: a copy of ``edgeops.db`` does not let anyone
call the API. A plain hash is enough because the secret is random and long (nothing to brute-force,
unlike a password). Every token has a unique name, which the audit log records as the actor of each
call made with it; names are never reused, even after a revocation, so the log stays unambiguous.

The ``tokens`` table lives in the store's SQLite file (WAL mode) but is reached through its own
connection, so the HTTP API and the CLI can create, check and revoke tokens while the server runs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from edgeops.errors import ConfigError, EdgeOpsError, NotFoundError
from fleet_server.store import now_ms

PREFIX = "eo_"
#: Random bytes in a secret (URL-safe base64 encoded: 43 characters).
SECRET_BYTES = 32
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)
#: ``last_used_ms`` is written at most this often per token (not on every request).
TOUCH_INTERVAL_MS = 60_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL,
    last_used_ms INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
"""


class TokenError(EdgeOpsError, PermissionError):
    """A bearer token is missing, malformed, unknown or revoked."""

    code = "invalid_token"


class TokenRevokedError(TokenError):
    """The token was valid once and has been revoked (``edgeops token revoke``)."""

    code = "token_revoked"


@dataclass(frozen=True)
class TokenInfo:
    """What is known of a token; the secret itself is not."""

    name: str
    created_ms: int
    last_used_ms: int | None
    revoked: bool


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    """Create, verify, list and revoke API tokens in the SQLite file at ``path``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(self, name: str) -> str:
        """A new token named ``name``; returns its secret, which is not stored and cannot be shown again."""
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"invalid token name {name!r}: expected {NAME_PATTERN}")
        secret = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        with self._lock:
            try:
                self._db.execute("INSERT INTO tokens (name, sha256, created_ms) VALUES (?,?,?)",
                                 (name, hash_secret(secret), now_ms()))
            except sqlite3.IntegrityError:
                raise ConfigError(f"a token named {name!r} exists (or existed): names are never reused") from None
        return secret

    def verify(self, secret: str) -> str:
        """The name of the token whose secret this is; TokenError if there is none or it is revoked."""
        if not secret.startswith(PREFIX):
            raise TokenError("not an EdgeOps API token (they start with 'eo_')")
        digest = hash_secret(secret)
        with self._lock:
            row = self._db.execute("SELECT name, sha256, last_used_ms, revoked FROM tokens WHERE sha256=?",
                                   (digest,)).fetchone()
            # The lookup is by hash of a 256-bit secret; the constant-time comparison is belt and braces.
            if row is None or not hmac.compare_digest(str(row["sha256"]), digest):
                raise TokenError("unknown API token")
            if row["revoked"]:
                raise TokenRevokedError(f"API token {row['name']!r} has been revoked")
            now = now_ms()
            if row["last_used_ms"] is None or now - int(row["last_used_ms"]) >= TOUCH_INTERVAL_MS:
                self._db.execute("UPDATE tokens SET last_used_ms=? WHERE name=?", (now, row["name"]))
        return str(row["name"])

    def all_tokens(self) -> list[TokenInfo]:
        with self._lock:
            rows = list(self._db.execute("SELECT name, created_ms, last_used_ms, revoked FROM tokens ORDER BY name"))
        return [TokenInfo(str(r["name"]), int(r["created_ms"]), r["last_used_ms"], bool(r["revoked"])) for r in rows]

    def revoke(self, name: str) -> bool:
        """Revoke the token ``name``; False if it was revoked already. NotFoundError if there is none."""
        with self._lock:
            row = self._db.execute("SELECT revoked FROM tokens WHERE name=?", (name,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown API token {name!r}")
            if row["revoked"]:
                return False
            self._db.execute("UPDATE tokens SET revoked=1 WHERE name=?", (name,))
        return True
