"""Verification of the OIDC token Pub/Sub attaches to each push request.

A push subscription configured with a service account sends ``Authorization: Bearer <JWT>``,
a Google-signed ID token whose audience is the push endpoint's URL. google-auth checks the
signature (against ``TASKS_OIDC_CERTS_URL``), ``iat``/``exp`` and the audience; this module
adds the issuer, the service account email and ``email_verified``, and two rules google-auth
does not have (docs/security.md):

- ``nbf`` (not before), when present, is honoured with the same clock skew as ``iat``.
  google-auth ignores it; Google's push tokens do not carry it, so this costs nothing.
- A token may live at most ``max_lifetime_seconds`` (one hour, ``exp - iat``), as Google's
  push tokens do; google-auth sets no maximum, so a leaked long-lived token would otherwise
  be accepted until it expires.

Claims of the wrong type (a string ``iat``, a NaN ``exp``, a non-string ``kid``) are refused
before google-auth sees them, which would otherwise raise TypeError: a 403, never a 500.

This module only verifies. Whether verification is on at all (``TASKS_VERIFY_OIDC``) is
the push view's decision.
"""

import base64
import binascii
import functools
import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import cachecontrol
import requests
from google.auth import exceptions as google_exceptions
from google.auth.transport.requests import Request
from google.oauth2 import id_token

from .conf import GOOGLE_ISSUERS, tasks_settings
from .exceptions import OIDCVerificationError

logger = logging.getLogger("gyrinx_tasks")

# Seconds to wait for the certificates endpoint. google-auth's own default is 120 s, far
# longer than a push request should hang; a failed fetch answers 403 and Pub/Sub retries.
CERTS_TIMEOUT = 10


class _CertsRequest(Request):
    """A google-auth transport whose requests time out after CERTS_TIMEOUT seconds."""

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        timeout = CERTS_TIMEOUT if timeout is None else timeout
        return super().__call__(url, method, body, headers, timeout=timeout, **kwargs)


class PushTokenVerifier:
    """Verifies push tokens, caching Google's certificates as long as they say they last."""

    # Tolerated clock difference with Google for iat/exp; 0 (google-auth's default) rejects
    # tokens minted a moment "in the future" by a clock a little ahead of ours.
    clock_skew_seconds = 10
    # Google's push tokens live exactly one hour (exp - iat == 3600).
    max_lifetime_seconds = 3600
    # Tokens whose signature and audience were verified, kept until they expire: Pub/Sub
    # sends the same token with every push for up to an hour, and checking its RS256
    # signature again (with google-auth parsing the certificates each time) cost most of a
    # push's CPU. A token is looked up by its exact text, so any change to it misses.
    verified_cache_size = 64

    def __init__(self) -> None:
        self._verified: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self._verified_lock = threading.Lock()

    @functools.cached_property
    def request(self) -> Request:
        # CacheControl keeps each certificate response for its Cache-Control max-age
        # (hours for Google's), so most verifications make no network call.
        return _CertsRequest(session=cachecontrol.CacheControl(requests.Session()))

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Return the claims of the request's token, or raise OIDCVerificationError."""
        audience, service_account = _required_settings()
        token = _bearer_token(authorization)
        key = (token, audience, tasks_settings.TASKS_OIDC_CERTS_URL)
        with self._verified_lock:
            cached = self._verified.get(key)
            if cached is not None:
                self._verified.move_to_end(key)
        if cached is None:
            _check_shape(token)
            claims = self._verified_claims(token, audience)
        else:
            claims = dict(cached)
            self._check_expiry(claims)  # google-auth checked it when the token was first seen
        _check_claims(claims, service_account)
        self._check_times(claims)
        if cached is None:
            with self._verified_lock:
                self._verified[key] = dict(claims)
                while len(self._verified) > self.verified_cache_size:
                    self._verified.popitem(last=False)
        return claims

    def _check_expiry(self, claims: dict[str, Any]) -> None:
        now = time.time()
        if now - self.clock_skew_seconds > claims["exp"]:
            raise _reject(f"The push token is invalid: Token expired, {claims['exp']} < "
                          f"{int(now - self.clock_skew_seconds)}.")

    def _check_times(self, claims: dict[str, Any]) -> None:
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > self.max_lifetime_seconds:
            raise _reject(
                f"The push token is invalid: it lives {lifetime:.0f} s (exp - iat), longer than "
                f"the {self.max_lifetime_seconds} s Google's push tokens live."
            )
        if lifetime < 0:
            raise _reject("The push token is invalid: it expires before it was issued.")
        not_before = claims.get("nbf")
        if not_before is not None and time.time() + self.clock_skew_seconds < not_before:
            raise _reject("The push token is invalid: it is not valid yet (nbf is in the future).")

    def _verified_claims(self, token: str, audience: str) -> dict[str, Any]:
        certs_url = tasks_settings.TASKS_OIDC_CERTS_URL
        # TypeError and the like only if _check_shape missed a case: still a bad token.
        invalid: tuple[type[Exception], ...] = (
            ValueError, TypeError, KeyError, OverflowError, RecursionError,
            google_exceptions.GoogleAuthError, *_pyjwt_errors())
        try:
            claims = id_token.verify_token(
                token,
                self.request,
                audience=audience,
                certs_url=certs_url,
                clock_skew_in_seconds=self.clock_skew_seconds,
            )
        except google_exceptions.TransportError as exc:
            raise _reject(
                f"Could not fetch the certificates for verifying push tokens "
                f"({_clause(exc)}). Check that TASKS_OIDC_CERTS_URL ({certs_url}) is reachable.",
                level=logging.ERROR,
            ) from exc
        except ImportError as exc:
            # google-auth needs PyJWT only when the URL serves a JWK set instead of PEM.
            raise _reject(
                f"Could not verify push tokens against {certs_url} ({_clause(exc)}). Point "
                f"TASKS_OIDC_CERTS_URL at an endpoint serving PEM certificates such as "
                f"Google's default, or install PyJWT.",
                level=logging.ERROR,
            ) from exc
        except invalid as exc:
            raise _reject(f"The push token is invalid: {_describe(exc, token)}") from exc
        return dict(claims)


@functools.cache
def get_verifier() -> PushTokenVerifier:
    """The process's verifier, created on first use so its certificate cache is shared."""
    return PushTokenVerifier()


def reset_verifier() -> None:
    """Forget the process's verifier and its cached certificates (for tests)."""
    get_verifier.cache_clear()


def verify_push_token(authorization: str | None) -> dict[str, Any]:
    """Verify a push request's Authorization header and return the token's claims.

    Raises OIDCVerificationError, whose message says why, when the header is missing or
    malformed, the token is invalid, or the settings needed to check it are not set.
    """
    return get_verifier().verify(authorization)


def _reject(reason: str, level: int = logging.WARNING) -> OIDCVerificationError:
    # Misconfiguration and unreachable certificates are logged at ERROR: they reject every
    # push until someone fixes them, unlike one bad request.
    logger.log(level, "Rejected a push request: %s", reason)
    return OIDCVerificationError(reason)


def _required_settings() -> tuple[str, str]:
    audience = tasks_settings.TASKS_OIDC_AUDIENCE
    if not audience:
        raise _reject(
            "Push tokens cannot be verified because no audience is configured. Set "
            "TASKS_OIDC_AUDIENCE, or CLOUD_RUN_SERVICE_URL so that the audience defaults to "
            "the push endpoint's URL.",
            level=logging.ERROR,
        )
    service_account = tasks_settings.TASKS_SERVICE_ACCOUNT
    if not service_account:
        raise _reject(
            "Push tokens cannot be verified because TASKS_SERVICE_ACCOUNT is not set. Set it "
            "to the email of the service account the push subscription signs tokens as.",
            level=logging.ERROR,
        )
    return audience, service_account


# HTTP authentication schemes (IANA registry) that rejections may name.
KNOWN_SCHEMES = frozenset({
    "basic", "digest", "negotiate", "ntlm", "hoba", "mutual", "token", "dpop", "gnap",
    "privatetoken", "vapid", "concordium", "scram-sha-1", "scram-sha-256", "aws4-hmac-sha256",
})


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise _reject(
            "The request has no Authorization header. Configure the push subscription with "
            "an OIDC service account so Pub/Sub sends a token."
        )
    scheme, *rest = authorization.split(None, 1)
    if scheme.lower() != "bearer":
        # Only a known scheme's name is quoted: the first word may itself be a credential
        # (a token sent without "Bearer "), and this message is logged.
        named = f"the {scheme!r}" if scheme.lower() in KNOWN_SCHEMES else "an unrecognised"
        raise _reject(
            f"The Authorization header uses {named} scheme; it must be 'Bearer <token>'."
        )
    token = rest[0].strip() if rest else ""
    if not token:
        raise _reject("The Authorization header says Bearer but carries no token.")
    if len(token.split()) != 1:
        raise _reject("The Authorization header must be 'Bearer <token>' with nothing after it.")
    return token


def _segment(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# Claimed times beyond this many seconds either side of 1970 (year ~33,658) are nonsense, and
# larger integers would overflow google-auth's arithmetic with floats.
MAX_CLAIM_SECONDS = 10**12


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < MAX_CLAIM_SECONDS  # False for NaN and the infinities too


def _check_shape(token: str) -> None:
    """Refuse, before verifying it, a token whose header or time claims have the wrong type.

    Only ever rejects: nothing read here is trusted, the signature is checked afterwards.
    """
    malformed = "it is not a well-formed JWT (three base64url segments holding JSON)."
    parts = token.split(".")
    if len(parts) != 3:
        raise _reject(f"The push token is invalid: {malformed}")
    try:
        header, claims = _segment(parts[0]), _segment(parts[1])
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise _reject(f"The push token is invalid: {malformed}") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise _reject(f"The push token is invalid: {malformed}")
    if not isinstance(header.get("kid", ""), str) or not isinstance(header.get("alg", ""), str):
        raise _reject("The push token is invalid: its header's 'kid' or 'alg' is not a string.")
    for name in ("iat", "exp", "nbf"):
        if name in claims and not _is_number(claims[name]):
            raise _reject(
                f"The push token is invalid: its {name!r} claim is not a number of seconds.")
    # Google's tokens carry one audience, a string; google-auth would fail on other types.
    if not isinstance(claims.get("aud", ""), str):
        raise _reject("The push token is invalid: its 'aud' claim is not a string.")


def _check_claims(claims: dict[str, Any], service_account: str) -> None:
    # google-auth's JWK-set path (PyJWT) does not insist on these, so check them here too.
    for name in ("iat", "exp"):
        if name not in claims:
            raise _reject(f"The push token is invalid: it has no {name!r} claim.")
    issuer = claims.get("iss")
    if issuer not in GOOGLE_ISSUERS:
        raise _reject(
            f"The push token was issued by {issuer!r}, not Google ({' or '.join(GOOGLE_ISSUERS)})."
        )
    email = claims.get("email")
    if email != service_account:
        raise _reject(
            f"The push token is for {email!r}, not TASKS_SERVICE_ACCOUNT "
            f"({service_account!r}). Make the push subscription use that service account, "
            f"or change the setting."
        )
    # Google sends a JSON boolean; some older tokens carried the string "true".
    if claims.get("email_verified") not in (True, "true"):
        raise _reject("The push token's email is not verified (email_verified is not true).")


def _describe(exc: Exception, token: str) -> str:
    """google-auth's reason for rejecting the token, unless it would quote the token."""
    message = str(exc)
    # google-auth quotes the token, or a decoded piece of it, when it cannot parse it.
    if "segment" in message.lower() or token in message:
        return "it is not a well-formed JWT (three base64url segments holding JSON)."
    return f"{_clause(exc)}."


def _clause(exc: Exception) -> str:
    return str(exc).strip().rstrip(".")


@functools.cache
def _pyjwt_errors() -> tuple[type[Exception], ...]:
    # PyJWT is optional; google-auth uses it only for JWK-set certificate endpoints.
    try:
        from jwt.exceptions import PyJWTError
    except ImportError:
        return ()
    return (PyJWTError,)
