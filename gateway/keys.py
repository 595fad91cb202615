"""API keys of the gateway: compact HS256 JWTs that Envoy's `jwt_authn` verifies in-process.

A key is a JWT signed with the gateway's signing secret, carrying its key id (`jti`) and its scope
(`read`, `write` or `admin`; each includes the ones before it). Envoy checks the signature, the
issuer and any expiry itself (no extra hop), and an RBAC filter checks the scope per route
(`gateway.envoy_config.auth_filters`). New keys need no change to Envoy's config; a revocation does
(the revoked ids are in its RBAC policy), which `kitrading up` applies by regenerating the config and
restarting the gateway (`services.launcher.mesh.watch_keys`).

Two files, both 0600, in `$KITRADING_HOME/secrets/` unless set otherwise:

- `gateway_signing_key` (`KITRADING_GATEWAY_SIGNING_KEY_FILE`): 32 random bytes, base64url;
- `gateway_keys.json` (`KITRADING_GATEWAY_KEYS_FILE`): one record per key: id, name, scope, the
  SHA-256 of the token, created time, expiry, revoked flag. Never the token itself.

The token is shown once, by `kitrading keys create`. Logs name the key id, never the token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from services.runtime.config import ConfigError, kitrading_home

#: The scopes, weakest first: a key holds its own scope and every one before it.
SCOPES: tuple[str, ...] = ("read", "write", "admin")
ISSUER = "kitrading"
KEYS_FILE_ENV = "KITRADING_GATEWAY_KEYS_FILE"
SIGNING_KEY_FILE_ENV = "KITRADING_GATEWAY_SIGNING_KEY_FILE"
KEYS_FILE = "gateway_keys.json"
SIGNING_KEY_FILE = "gateway_signing_key"
#: Key ids are `k_` and 12 lower-case hex digits: safe in a regex, a header and a log line.
KEY_ID_PREFIX = "k_"


def scopes_granting(scope: str) -> tuple[str, ...]:
    """The scopes whose keys may make a call that needs `scope` (`write` -> write, admin)."""
    return SCOPES[SCOPES.index(scope) :]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def mint(secret: bytes, claims: Mapping[str, object]) -> str:
    """A compact HS256 JWT of `claims` (no `kid` header: the gateway has one signing secret)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(dict(claims), separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def jwks(secret: bytes) -> str:
    """The JWKS (one symmetric `oct` key) that Envoy's jwt_authn verifies keys with."""
    return json.dumps({"keys": [{"kty": "oct", "alg": "HS256", "k": _b64(secret)}]}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store keeps about a key: never the token, only its SHA-256."""

    id: str
    scope: str
    sha256: str
    created: float
    name: str = ""
    expires: float | None = None
    revoked: bool = False
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeys:
    """What the gateway's Envoy config needs: the signing secret and the revoked key ids."""

    secret: bytes
    revoked: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the secret never reaches a log or a traceback
        return f"ApiKeys(secret=<{len(self.secret)} bytes>, revoked={self.revoked!r})"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, 0600 from the start (folder 0700 when created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.replace(path)


class KeyStore:
    """The key records and the signing secret on disk (`KeyStore.from_env()`)."""

    def __init__(self, keys_file: Path, signing_key_file: Path) -> None:
        self.keys_file = keys_file
        self.signing_key_file = signing_key_file

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, directory: Path | None = None) -> KeyStore:
        """`directory` (a `--secrets-dir`), else the `*_FILE` variables, else `$KITRADING_HOME/secrets`."""
        source = os.environ if env is None else env
        if directory is not None:
            return cls(directory / KEYS_FILE, directory / SIGNING_KEY_FILE)
        base = kitrading_home(source) / "secrets"
        keys = source.get(KEYS_FILE_ENV) or str(base / KEYS_FILE)
        signing = source.get(SIGNING_KEY_FILE_ENV) or str(base / SIGNING_KEY_FILE)
        return cls(Path(keys), Path(signing))

    # ---- reading ----

    def records(self) -> list[KeyRecord]:
        try:
            text = self.keys_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        try:
            data = json.loads(text) if text.strip() else {"keys": []}
            return [KeyRecord(**item) for item in data["keys"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.keys_file}: not a key store written by `kitrading keys` ({exc})"
            ) from None

    def secret(self) -> bytes | None:
        try:
            text = self.signing_key_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        try:
            value = _unb64(text)
        except ValueError:
            value = b""
        if len(value) < 32:
            raise ConfigError(f"{self.signing_key_file}: the signing key must be >= 32 bytes, base64url")
        return value

    def api_keys(self) -> ApiKeys | None:
        """None while no key was ever created (the open loopback default); else what Envoy checks.

        Revoking every key does not reopen the gateway: keys stay required once one exists."""
        records = self.records()
        if not records:
            return None
        secret = self.secret()
        if secret is None:
            raise ConfigError(
                f"{self.keys_file} lists keys but the signing key {self.signing_key_file} is missing"
            )
        return ApiKeys(secret, tuple(sorted(r.id for r in records if r.revoked)))

    # ---- changing ----

    def _save(self, records: list[KeyRecord]) -> None:
        body = {"keys": [asdict(r) for r in records]}
        _write_private(self.keys_file, json.dumps(body, indent=2) + "\n")

    def _secret_or_new(self) -> bytes:
        existing = self.secret()
        if existing is not None:
            return existing
        value = secrets.token_bytes(32)
        _write_private(self.signing_key_file, _b64(value) + "\n")
        return value

    def create(
        self, scope: str, *, name: str = "", expires_in_s: float | None = None, now: float | None = None
    ) -> tuple[KeyRecord, str]:
        """A new key: its record (stored) and its token (shown once, stored nowhere)."""
        if scope not in SCOPES:
            raise ConfigError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
        secret = self._secret_or_new()
        created = time.time() if now is None else now
        key_id = KEY_ID_PREFIX + secrets.token_hex(6)
        claims: dict[str, object] = {"iss": ISSUER, "jti": key_id, "scope": scope, "iat": int(created)}
        expires = None
        if expires_in_s is not None:
            expires = float(int(created + expires_in_s))
            claims["exp"] = int(expires)
        token = mint(secret, claims)
        record = KeyRecord(key_id, scope, token_hash(token), created, name=name, expires=expires)
        self._save([*self.records(), record])
        return record, token

    def revoke(self, key_id: str, *, now: float | None = None) -> KeyRecord:
        records = self.records()
        for i, record in enumerate(records):
            if record.id == key_id:
                if not record.revoked:
                    records[i] = replace(record, revoked=True, revoked_at=time.time() if now is None else now)
                    self._save(records)
                return records[i]
        raise KeyError(key_id)

    def fingerprint(self) -> str:
        """Changes exactly when Envoy's config must change (keys on/off, secret, revoked ids)."""
        with contextlib.suppress(ConfigError):
            keys = self.api_keys()
            if keys is None:
                return "open"
            return hashlib.sha256(keys.secret + ",".join(keys.revoked).encode()).hexdigest()
        return "invalid"
