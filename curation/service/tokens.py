"""API tokens with roles, stored hashed: HOME/service/tokens.json.

A token is shown once, when `curate token create` makes it; the file keeps only its SHA-256, so a leaked file
grants nothing. The file lives outside the DuckDB catalog on purpose: the CLI can create or revoke tokens while
the service (the catalog's one writer) is running, and the service picks the change up at the next request.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from curation.errors import CurationError

ROLES = ("viewer", "curator", "admin")  # each role can do everything the ones before it can
MAX_LIFETIME = timedelta(days=3650)  # ten years; a longer one overflows the expiry date or means "never" (omit it)


class TokenError(CurationError):
    """A token command got a bad role, id or lifetime."""


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    role: str
    sha256: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None = None

    def state(self, now: datetime | None = None) -> str:
        """active | expired | revoked."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and datetime.fromisoformat(self.expires_at) <= (now or datetime.now(UTC)):
            return "expired"
        return "active"

    def public(self) -> dict:
        """What listings show: everything but the hash."""
        data = asdict(self)
        del data["sha256"]
        return {**data, "state": self.state()}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, home_root: str | Path):
        self.path = Path(home_root) / "service" / "tokens.json"
        self._cache: tuple[int, int, dict[str, TokenRecord]] | None = None

    def _read(self) -> list[TokenRecord]:
        if not self.path.exists():
            return []
        return [TokenRecord(**item) for item in json.loads(self.path.read_text())["tokens"]]

    def _write(self, records: list[TokenRecord]) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"tokens": [asdict(record) for record in records]}, indent=2) + "\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, self.path)

    def _update(self, change) -> TokenRecord:
        """Read-modify-write under an exclusive file lock (the CLI and the service may both write)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = self._read()
            result = change(records)
            self._write(records)
        return result

    def create(self, name: str, role: str, *, expires_in: timedelta | None = None) -> tuple[str, TokenRecord]:
        """Returns (the token, shown only now, and its record)."""
        if role not in ROLES:
            raise TokenError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if expires_in is not None and expires_in <= timedelta(0):
            raise TokenError("a token's lifetime must be positive")
        if expires_in is not None and expires_in > MAX_LIFETIME:
            raise TokenError(_too_long(expires_in))
        token_id = secrets.token_hex(4)
        token = f"cur_{token_id}_{secrets.token_urlsafe(32)}"
        now = datetime.now(UTC)
        record = TokenRecord(token_id, name, role, _hash(token), now.isoformat(),
                             (now + expires_in).isoformat() if expires_in else None)  # fmt: skip
        self._update(lambda records: records.append(record))
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        def change(records: list[TokenRecord]) -> TokenRecord:
            for i, record in enumerate(records):
                if record.token_id == token_id:
                    records[i] = TokenRecord(**{**asdict(record), "revoked_at": datetime.now(UTC).isoformat()})
                    return records[i]
            raise TokenError(f"no token {token_id!r} (see `curate token list`)")

        return self._update(change)

    def list(self) -> list[TokenRecord]:
        return self._read()

    def lookup(self, token: str) -> TokenRecord | None:
        """The record of a presented token, whatever its state; re-reads the file only when it changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        if self._cache is None or self._cache[:2] != (stat.st_mtime_ns, stat.st_size):
            self._cache = (stat.st_mtime_ns, stat.st_size, {record.sha256: record for record in self._read()})
        return self._cache[2].get(_hash(token))


def parse_lifetime(text: str) -> timedelta:
    """'90d', '12h', '30m' -> timedelta, at most MAX_LIFETIME (checked before a timedelta could overflow)."""
    seconds_per = {"d": 86400, "h": 3600, "m": 60}
    if len(text) < 2 or text[-1] not in seconds_per or not text[:-1].isdigit():
        raise TokenError(f"lifetime {text!r}: expected a number and a unit, e.g. 90d, 12h or 30m")
    seconds = int(text[:-1]) * seconds_per[text[-1]]
    if seconds > MAX_LIFETIME.total_seconds():
        raise TokenError(_too_long(text))
    return timedelta(seconds=seconds)


def _too_long(lifetime: str | timedelta) -> str:
    shown = lifetime if isinstance(lifetime, str) else f"{lifetime.days} days"
    return f"lifetime {shown} is longer than {MAX_LIFETIME.days} days (10 years); give none for no expiry"
