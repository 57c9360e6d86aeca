"""Verification of the OIDC token Pub/Sub attaches to each push request.

A push subscription configured with a service account sends ``Authorization: Bearer <JWT>``,
a Google-signed ID token whose audience is the push endpoint's URL. google-auth checks the
signature (against ``TASKS_OIDC_CERTS_URL``), ``iat``/``exp`` and the audience; this module
adds the issuer, the service account email and ``email_verified``.

This module only verifies. Whether verification is on at all (``TASKS_VERIFY_OIDC``) is
the push view's decision.
"""

import functools
import logging
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

    @functools.cached_property
    def request(self) -> Request:
        # CacheControl keeps each certificate response for its Cache-Control max-age
        # (hours for Google's), so most verifications make no network call.
        return _CertsRequest(session=cachecontrol.CacheControl(requests.Session()))

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """Return the claims of the request's token, or raise OIDCVerificationError."""
        audience, service_account = _required_settings()
        token = _bearer_token(authorization)
        claims = self._verified_claims(token, audience)
        _check_claims(claims, service_account)
        return claims

    def _verified_claims(self, token: str, audience: str) -> dict[str, Any]:
        certs_url = tasks_settings.TASKS_OIDC_CERTS_URL
        invalid: tuple[type[Exception], ...] = (
            ValueError, google_exceptions.GoogleAuthError, *_pyjwt_errors())
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


def _bearer_token(authorization: str | None) -> str:
    if not authorization or not authorization.strip():
        raise _reject(
            "The request has no Authorization header. Configure the push subscription with "
            "an OIDC service account so Pub/Sub sends a token."
        )
    scheme, *rest = authorization.split(None, 1)
    if scheme.lower() != "bearer":
        # Only the scheme is quoted: whatever follows may be a credential.
        raise _reject(
            f"The Authorization header uses the {scheme[:20]!r} scheme; it must be "
            f"'Bearer <token>'."
        )
    token = rest[0].strip() if rest else ""
    if not token:
        raise _reject("The Authorization header says Bearer but carries no token.")
    if len(token.split()) != 1:
        raise _reject("The Authorization header must be 'Bearer <token>' with nothing after it.")
    return token


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
