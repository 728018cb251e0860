"""Who a client is and what it may see: signed tokens with entitlements (sans I/O).

Exchange data is licensed, so a token (a JWT, checked with PyJWT) says which symbols a
client may have (`symbols`: a list, or "*") and in which tier (`tier`: "realtime", or
"delayed": the board as it stood DELAY_S ago). Only the configured algorithm is accepted:
HS256 with TOKEN_SECRET, or RS256/ES256 with the public key in TOKEN_PUBLIC_KEY_FILE (the
algorithm follows the key unless TOKEN_ALGORITHM names it), so a token signed with `none`,
or an HS256 token made with the public key as its secret, never passes. `exp` is required.
A client without a token gets what ANONYMOUS says: realtime (the default), delayed, or
nothing (it must send a token first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from starlette.requests import HTTPConnection

from quote_core.quote import QuoteError, normalize_symbol
from quote_runtime.settings import ConfigError

from .protocol import ALL, Symbols
from .settings import Settings

TierName = Literal["realtime", "delayed"]
TIERS: tuple[TierName, ...] = ("realtime", "delayed")
ALGORITHMS = ("HS256", "RS256", "ES256")


class AuthError(Exception):
    """A token that does not pass: the message is the close reason (short, no secrets)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one client may see, from its token (or ANONYMOUS)."""

    symbols: Symbols = ALL
    tier: TierName = "realtime"
    sub: str | None = None
    # Seconds since the epoch when the token expires; None without a token.
    exp: float | None = None

    def split(self, asked: Iterable[str]) -> tuple[list[str], list[str]]:
        """The asked symbols this grant covers, and the ones it does not (sorted)."""
        if self.symbols == ALL:
            return sorted(asked), []
        allowed: list[str] = []
        refused: list[str] = []
        for symbol in sorted(asked):
            (allowed if symbol in self.symbols else refused).append(symbol)
        return allowed, refused

    def allows(self, symbol: str) -> bool:
        return self.symbols == ALL or symbol in self.symbols


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.issuer = settings.token_issuer
        self.audience = settings.token_audience
        self.anonymous: Grant | None = (None if settings.anonymous == "deny"
                                        else Grant(tier=settings.anonymous))  # type: ignore[arg-type]
        self.key: Any = None
        self.algorithm: str | None = None
        if settings.token_secret is not None:
            self.key, self.algorithm = settings.token_secret, "HS256"
        elif settings.token_public_key_file is not None:
            self.key, self.algorithm = load_key(settings.token_public_key_file,
                                                settings.token_algorithm)

    @property
    def takes_tokens(self) -> bool:
        return self.key is not None

    def grant_for(self, token: str | None) -> Grant:
        """An HTTP request's grant: its token's, or ANONYMOUS's when it has none."""
        if token is not None:
            return self.verify(token)
        if self.anonymous is None:
            raise AuthError("a token is required (ANONYMOUS=deny)")
        return self.anonymous

    def verify(self, token: str) -> Grant:
        """The grant a token carries, or AuthError saying why it does not pass."""
        if self.key is None or self.algorithm is None:
            raise AuthError("this service takes no tokens (no TOKEN_SECRET or "
                            "TOKEN_PUBLIC_KEY_FILE)")
        try:
            claims = jwt.decode(
                token, self.key, algorithms=[self.algorithm], issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp"], "verify_aud": self.audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError(f"token not signed with {self.algorithm}") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
            raise AuthError(f"token {str(exc).lower()}") from None
        except jwt.InvalidTokenError:
            raise AuthError("token malformed") from None
        return grant_from(claims)


def grant_from(claims: dict[str, Any]) -> Grant:
    """The entitlements of verified claims; AuthError for claims of the wrong shape."""
    raw = claims.get("symbols", ALL)
    symbols: Symbols
    if raw == ALL:
        symbols = ALL
    elif isinstance(raw, list) and len(raw) <= 10_000:
        try:
            symbols = frozenset(normalize_symbol(s) for s in raw)
        except QuoteError:
            raise AuthError("token's symbols claim holds an invalid symbol") from None
    else:
        raise AuthError('token\'s symbols claim must be a list or "*"')
    tier = claims.get("tier", "realtime")
    if tier not in TIERS:
        raise AuthError('token\'s tier claim must be "realtime" or "delayed"')
    exp = claims["exp"]
    sub = claims.get("sub")
    return Grant(symbols, tier, sub if isinstance(sub, str) else None,
                 float(exp) if isinstance(exp, (int, float)) and math.isfinite(exp) else None)


def load_key(path: str, algorithm: str | None) -> tuple[Any, str]:
    """The public key of TOKEN_PUBLIC_KEY_FILE and the one algorithm it verifies. Settings
    reads it at start too, so a missing or wrong file stops the process there (exit 2)."""
    accepts = "a readable PEM file holding an RSA (RS256) or a P-256 EC (ES256) public key"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"TOKEN_PUBLIC_KEY_FILE must be {accepts}, got {path!r} (not a "
                          f"readable PEM public key: {exc.strerror or exc})") from None
    try:
        key = load_pem_public_key(data)
    except ValueError:
        raise ConfigError(f"TOKEN_PUBLIC_KEY_FILE must be {accepts}, got {path!r} (not a "
                          "readable PEM public key: no PEM public key in it)") from None
    if isinstance(key, rsa.RSAPublicKey):
        fits = "RS256"
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        fits = "ES256"
    else:
        raise ConfigError(f"TOKEN_PUBLIC_KEY_FILE must be {accepts}, got {path!r} (its "
                          f"key is {type(key).__name__.removeprefix('_')})")
    if algorithm is not None and algorithm != fits:
        raise ConfigError(f"TOKEN_ALGORITHM={algorithm} does not fit the key in "
                          f"TOKEN_PUBLIC_KEY_FILE ({fits})")
    return key, fits


def token_of(conn: HTTPConnection) -> str | None:
    """A token on the URL (`?token=`) or in an `Authorization: Bearer` header."""
    return conn.query_params.get("token") or bearer(conn.headers.get("authorization"))


# A token that does not pass: HTTP 401 with this code and challenge (RFC 6750 section 3.1);
# the websocket closes with 1008 instead.
UNAUTHORIZED = "unauthorized"
INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
