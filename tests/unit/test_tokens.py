"""API tokens: random secrets, stored only as sha256, verified, revoked, names never reused."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from edgeops.errors import ConfigError, NotFoundError
from fleet_server.store import Store
from fleet_server.tokens import PREFIX, TokenError, TokenRevokedError, Tokens


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "edgeops.db"


def test_a_secret_verifies_to_its_name_and_only_its_hash_is_stored(db: Path) -> None:
    tokens = Tokens(db)
    secret = tokens.create("ci-bot")
    other = tokens.create("alice")
    assert secret.startswith(PREFIX) and len(secret) >= len(PREFIX) + 40
    assert secret != other
    assert tokens.verify(secret) == "ci-bot"
    assert tokens.verify(other) == "alice"

    raw = db.read_bytes() + (db.with_name(db.name + "-wal").read_bytes() if db.with_name(db.name + "-wal").exists()
                             else b"")
    assert secret.encode() not in raw and secret[len(PREFIX):].encode() not in raw
    rows = sqlite3.connect(db).execute("SELECT name, sha256 FROM tokens ORDER BY name").fetchall()
    assert rows == [("alice", hashlib.sha256(other.encode()).hexdigest()),
                    ("ci-bot", hashlib.sha256(secret.encode()).hexdigest())]


def test_unknown_malformed_and_revoked_secrets_are_refused(db: Path) -> None:
    tokens = Tokens(db)
    secret = tokens.create("ci-bot")
    for bad in ("", "Bearer x", "eo_" + "A" * 43, secret[:-1], secret + "x"):
        with pytest.raises(TokenError):
            tokens.verify(bad)
    assert tokens.revoke("ci-bot") is True
    with pytest.raises(TokenRevokedError, match="ci-bot"):
        tokens.verify(secret)
    assert tokens.revoke("ci-bot") is False
    with pytest.raises(NotFoundError):
        tokens.revoke("nobody")


def test_names_are_checked_and_never_reused(db: Path) -> None:
    tokens = Tokens(db)
    tokens.create("ci-bot")
    tokens.revoke("ci-bot")
    with pytest.raises(ConfigError, match="never reused"):
        tokens.create("ci-bot")
    for bad in ("", "has space", "-dash-first", "x" * 65, "semi;colon"):
        with pytest.raises(ConfigError, match="invalid token name"):
            tokens.create(bad)


def test_listing_shows_use_and_revocation_but_no_secret(db: Path) -> None:
    tokens = Tokens(db)
    used = tokens.create("used")
    tokens.create("idle")
    tokens.create("gone")
    tokens.verify(used)
    tokens.revoke("gone")
    listed = {t.name: t for t in tokens.all_tokens()}
    assert sorted(listed) == ["gone", "idle", "used"]
    assert listed["used"].last_used_ms is not None and listed["idle"].last_used_ms is None
    assert [n for n, t in listed.items() if t.revoked] == ["gone"]
    assert not hasattr(listed["used"], "secret") and not hasattr(listed["used"], "sha256")


def test_tokens_share_the_store_file_and_survive_reopening(db: Path) -> None:
    store = Store(db)
    secret = Tokens(db).create("ops")
    store.audit("ops", "deploy", "deployment-1")
    reopened = Tokens(db)
    assert reopened.verify(secret) == "ops"
    assert [a["actor"] for a in Store(db).audit_log()] == ["ops"]
