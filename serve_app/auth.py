"""API keys as bearer tokens: who is calling, and what they may use.

Keys are stored only as ``sha256:<hex>`` digests of the token, so a leaked keys file or environment dump does not
hand out working keys. Plain SHA-256 (no salt, no slow KDF) is enough because tokens are long random strings
(``new_token``), not passwords a person picks: there is nothing to guess. ``hash_token`` refuses short tokens so
that a weak one cannot be enrolled by mistake.

A presented token is hashed and looked up in a dict of digests. The lookup's timing could at most leak bits of a
stored digest, which is worthless without a preimage of it, so no constant-time comparison is needed.

Entries come from a YAML file (``keys: [...]``) and/or an environment variable holding a JSON list of the same
entries; both are optional, and together they must name each key and each digest once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from serve_app.errors import ConfigError, ServeFleetError

__all__ = [
    "ANONYMOUS",
    "AuthConfig",
    "Authenticator",
    "Forbidden",
    "KeyEntry",
    "Principal",
    "Unauthenticated",
    "admin_refusal",
    "exposure_warning",
    "hash_token",
    "is_loopback",
    "load_key_entries",
    "new_token",
]

DEFAULT_KEYS_ENV = "SERVEFLEET_API_KEYS"
HASH_PREFIX = "sha256:"
ALL_VARIANTS = "*"
TOKEN_PREFIX = "sf-"
MIN_TOKEN_CHARS = 32
# An Authorization header longer than this is refused before any work; real bearer tokens are far shorter.
MAX_HEADER_CHARS = 4096

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class Unauthenticated(ServeFleetError):
    """No usable API key: missing, malformed or unknown. The message never repeats what the client sent."""

    status_code = 401
    error_type = "invalid_request_error"  # what OpenAI's API sends with a 401
    default_code = "invalid_api_key"

    def response_headers(self) -> dict[str, str]:
        # RFC 6750: a 401 for a bearer-protected resource names the scheme the client should use.
        return {"www-authenticate": 'Bearer realm="servefleet"'}


class Forbidden(ServeFleetError):
    """A known key asking for something it was not granted."""

    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


def hash_token(token: str) -> str:
    """The ``sha256:<hex>`` digest to store for ``token`` (what ``servefleet keys hash`` prints)."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"an API key must be at least {MIN_TOKEN_CHARS} characters; use `new_token()`")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError("an API key must be printable ASCII without spaces (it travels in an HTTP header)")
    return _digest(token)


def _digest(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random API key: 256 bits from the OS, with a prefix that secret scanners can spot."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class KeyEntry(BaseModel):
    """One API key as the operator stores it: a name, the token's digest, and what the key may do."""

    model_config = _FROZEN

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$",
        description="Who holds the key; shown in logs and used as the rate-limit key. Never the token itself.",
    )
    key_hash: str = Field(
        description="`sha256:<64 hex digits>` of the token, as printed by `servefleet keys hash`.",
    )
    variants: list[str] = Field(
        description='Variant names this key may be served by, or ["*"] for all. Required: no implicit grant.',
    )
    admin: bool = Field(default=False, description="May call admin routes.")
    requests_per_s: float | None = Field(
        default=None, gt=0, description="Request rate limit for this key; None for no request limit."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        gt=0,
        description="Token budget per minute (prompt plus max_tokens of each request); None for no token limit.",
    )

    @field_validator("key_hash")
    @classmethod
    def _is_digest(cls, value: str) -> str:
        hex_part = value.removeprefix(HASH_PREFIX)
        if not value.startswith(HASH_PREFIX) or len(hex_part) != 64 or not _is_lower_hex(hex_part):
            # Deliberately does not echo the value: it may be a plaintext token pasted by mistake.
            raise ValueError("must be 'sha256:' and 64 lowercase hex digits (store `servefleet keys hash` output)")
        return value

    @field_validator("variants")
    @classmethod
    def _variant_list(cls, value: list[str]) -> list[str]:
        if ALL_VARIANTS in value and len(value) > 1:
            raise ValueError('"*" grants every variant and cannot be combined with names')
        if len(set(value)) != len(value):
            raise ValueError("variant names must not repeat")
        if any(not v for v in value):
            raise ValueError("variant names must not be empty")
        return value


def _is_lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class AuthConfig(BaseModel):
    """API key authentication. Off by default: the default server binds 127.0.0.1, where every caller is local."""

    model_config = _FROZEN

    enabled: bool = Field(default=False, description="Require `Authorization: Bearer <key>` on API routes.")
    keys_file: Path | None = Field(
        default=None,
        description="YAML file with `keys: [...]` entries (hashed). Must not be writable by group or others.",
    )
    keys_env: str = Field(
        default=DEFAULT_KEYS_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable that may hold a JSON list of further key entries.",
    )


_ENTRIES = TypeAdapter(list[KeyEntry])


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid API keys in {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def _entries(raw: Any, source: str) -> list[KeyEntry]:
    try:
        return _ENTRIES.validate_python(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def _read_keys_file(path: Path) -> list[KeyEntry]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"API keys file not found: {path}") from None
    # Whoever can write this file can grant themselves an admin key; refuse rather than warn.
    if os.name == "posix" and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"API keys file {path} is writable by group or others; chmod 600 it")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"API keys file {path} is not valid YAML: {error}") from None
    if not isinstance(data, Mapping) or set(data) != {"keys"}:
        raise ConfigError(f"API keys file {path} must hold a mapping with a single `keys:` list")
    return _entries(data["keys"], str(path))


def _read_keys_env(name: str, environ: Mapping[str, str]) -> list[KeyEntry]:
    text = environ.get(name, "").strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        # The position, not the text: the variable may hold something secret.
        raise ConfigError(f"${name} is not valid JSON (line {error.lineno}, column {error.colno})") from None
    return _entries(data, f"${name}")


def load_key_entries(config: AuthConfig, *, environ: Mapping[str, str] | None = None) -> list[KeyEntry]:
    """Every key entry from the file, then the environment. Empty when auth is disabled.

    Raises ``ConfigError`` for an unreadable or invalid source, a repeated name or digest, or auth enabled with
    no keys at all (which would refuse every request: a mistake better caught at start-up).
    """
    if not config.enabled:
        return []
    env = os.environ if environ is None else environ
    entries: list[KeyEntry] = []
    if config.keys_file is not None:
        entries += _read_keys_file(config.keys_file)
    entries += _read_keys_env(config.keys_env, env)
    if not entries:
        where = f"{config.keys_file} or ${config.keys_env}" if config.keys_file else f"${config.keys_env}"
        raise ConfigError(f"auth is enabled but no API keys were found in {where}")
    _check_unique([e.name for e in entries], "key names")
    _check_unique([e.key_hash for e in entries], "key digests (the same token enrolled twice)", show=False)
    return entries


def _check_unique(values: list[str], what: str, *, show: bool = True) -> None:
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:
        detail = f": {', '.join(repeated)}" if show else ""
        raise ConfigError(f"repeated {what}{detail}")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, once authenticated. ``name`` is the key to rate-limit and log by."""

    name: str
    variants: frozenset[str] | None
    """Variants this caller may be served by; None means all."""
    admin: bool = False
    requests_per_s: float | None = None
    tokens_per_minute: int | None = None

    def may_use(self, variant: str) -> bool:
        return self.variants is None or variant in self.variants


# Who calls when auth is off. It is trusted with everything because turning auth off says every caller that can
# reach the port is trusted; admin routes still answer only on loopback (see ``is_loopback``).
ANONYMOUS = Principal(name="anonymous", variants=None, admin=True)


def _principal(entry: KeyEntry) -> Principal:
    variants = None if entry.variants == [ALL_VARIANTS] else frozenset(entry.variants)
    return Principal(
        name=entry.name,
        variants=variants,
        admin=entry.admin,
        requests_per_s=entry.requests_per_s,
        tokens_per_minute=entry.tokens_per_minute,
    )


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal`` and checks what it may do.

    Build it once at start-up (``Authenticator.from_config``) or from entries in tests; it does no I/O after that.
    """

    def __init__(self, entries: Iterable[KeyEntry], *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._by_digest = {e.key_hash: _principal(e) for e in entries}

    @classmethod
    def from_config(cls, config: AuthConfig, *, environ: Mapping[str, str] | None = None) -> Authenticator:
        return cls(load_key_entries(config, environ=environ), enabled=config.enabled)

    @property
    def principals(self) -> list[Principal]:
        """Every known caller (e.g. to build per-key rate limits); empty when auth is off."""
        return sorted(self._by_digest.values(), key=lambda p: p.name)

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The caller behind ``Authorization: Bearer <key>``; ``ANONYMOUS`` when auth is off.

        Raises ``Unauthenticated`` (401) for a missing, malformed or unknown key.
        """
        if not self.enabled:
            return ANONYMOUS
        if authorization_header is None or not authorization_header.strip():
            raise Unauthenticated("missing API key; send it as 'Authorization: Bearer <key>'")
        token = _bearer_token(authorization_header)
        if token is None:
            raise Unauthenticated("malformed Authorization header; expected 'Bearer <key>'")
        principal = self._by_digest.get(_digest(token))
        if principal is None:
            raise Unauthenticated("invalid API key")
        return principal

    def authorize_variant(self, principal: Principal, variant: str) -> None:
        """Raise ``Forbidden`` (403) unless ``principal`` may be served by ``variant``."""
        if not principal.may_use(variant):
            raise Forbidden(f"this API key may not use model {variant!r}", param="model", code="model_not_allowed")

    def authorize_admin(self, principal: Principal) -> None:
        """Raise ``Forbidden`` (403) unless ``principal`` holds an admin key."""
        if not principal.admin:
            raise Forbidden("this route needs an admin API key", code="admin_required")


def _bearer_token(header: str) -> str | None:
    if len(header) > MAX_HEADER_CHARS:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    # The scheme is case-insensitive (RFC 9110); the token is one printable ASCII word.
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    if not token.isascii() or not token.isprintable():
        return None
    return token


def is_loopback(host: str | None) -> bool:
    """Whether a client address is on this machine (for admin routes, which answer only there)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return host == "localhost"


def admin_refusal(auth: Authenticator, principal: Principal, client_host: str | None) -> Forbidden | None:
    """Why this caller may not use an admin route, or None: admin routes answer only to clients on this
    machine, and with auth on only to admin keys."""
    if not is_loopback(client_host):
        return Forbidden("admin routes answer only to clients on this machine", code="admin_loopback_only")
    try:
        auth.authorize_admin(principal)
    except Forbidden as refused:
        return refused
    return None


def exposure_warning(config: AuthConfig, bind_host: str) -> str | None:
    """A start-up warning when the API would accept anyone on the network: auth off on a non-loopback bind."""
    if config.enabled or is_loopback(bind_host):
        return None
    return (
        f"the API binds {bind_host} with authentication off: anyone who can reach it can use every model; "
        "enable auth (see SECURITY.md) or bind 127.0.0.1"
    )
