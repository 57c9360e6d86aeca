"""Push token verification (gyrinx_tasks/auth.py): behaviour that mutmut showed no test held.

Each test names the mutants it kills (docs/testing.md, "Mutation testing"); the rest of
auth.py's survivors are accounted for in scripts/mutation/survivors.md.
"""

import base64
import importlib.util
import json
import logging
import time

import pytest
import requests

from gyrinx_tasks.auth import CERTS_TIMEOUT, PushTokenVerifier, verify_push_token
from gyrinx_tasks.exceptions import OIDCVerificationError

pytest_plugins = ["tests.oidc"]  # the oidc fixtures


# _CertsRequest.__call__ mutants 1-17: fetching certificates never waits longer than
# CERTS_TIMEOUT unless the caller says otherwise (google-auth's own default is 120 s), and the
# request is otherwise passed on as made.
def test_certificate_fetches_are_bounded_in_time_and_passed_on_whole(monkeypatch):
    request = PushTokenVerifier().request
    sent = []

    def send(method, url, data=None, headers=None, timeout=None, **kwargs):
        sent.append((method, url, data, headers, timeout, kwargs))
        response = requests.Response()
        response.status_code = 200
        return response

    monkeypatch.setattr(request.session, "request", send)

    request("http://certs.invalid/a")
    request("http://certs.invalid/b", "POST", b"body", {"X-Probe": "1"}, allow_redirects=False)
    request("http://certs.invalid/c", timeout=3)

    assert sent == [
        ("GET", "http://certs.invalid/a", None, None, CERTS_TIMEOUT, {}),
        ("POST", "http://certs.invalid/b", b"body", {"X-Probe": "1"}, CERTS_TIMEOUT,
         {"allow_redirects": False}),
        ("GET", "http://certs.invalid/c", None, None, 3, {}),
    ]
    assert CERTS_TIMEOUT < 120


# PushTokenVerifier._check_expiry mutants 2, 3, 10: a remembered token gets the same clock
# skew google-auth gave it, to the second, and then the same "Token expired" refusal.
def test_a_remembered_token_keeps_the_clock_skew_to_the_second(oidc, monkeypatch):
    header = oidc.header()
    exp = verify_push_token(header)["exp"]
    skew = PushTokenVerifier.clock_skew_seconds

    monkeypatch.setattr(time, "time", lambda: exp + skew)
    assert verify_push_token(header)["exp"] == exp

    monkeypatch.setattr(time, "time", lambda: exp + skew + 1)
    with pytest.raises(OIDCVerificationError) as refused:
        verify_push_token(header)
    assert str(refused.value) == f"The push token is invalid: Token expired, {exp} < {exp + 1}."


# _reject mutants 6, 7: the log line carries the reason (the token never; test_auth.py).
def test_a_rejection_is_logged_with_its_reason(oidc, caplog):
    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        with pytest.raises(OIDCVerificationError) as refused:
            verify_push_token(oidc.header(email_verified=False))

    assert [r.getMessage() for r in caplog.records] == [
        f"Rejected a push request: {refused.value}"]


# _check_claims mutants 27, 28: older tokens carry email_verified as the string "true".
def test_email_verified_as_the_string_true_is_accepted(oidc):
    assert verify_push_token(oidc.header(email_verified="true"))["email_verified"] == "true"


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# _check_shape mutants 17, 20: a header or payload that is JSON but not an object is a
# malformed token, refused with that reason, whichever of the two it is.
@pytest.mark.parametrize(("header", "claims"), [
    ({"alg": "RS256"}, ["iat", "exp"]),
    (["RS256"], {"iat": 1}),
])
def test_a_token_whose_header_or_payload_is_not_an_object_is_malformed(oidc, header, claims):
    token = f"{_b64(header)}.{_b64(claims)}.c2ln"

    with pytest.raises(OIDCVerificationError) as refused:
        verify_push_token(f"Bearer {token}")
    assert str(refused.value) == ("The push token is invalid: it is not a well-formed JWT "
                                  "(three base64url segments holding JSON).")


# _is_number mutant 5: a claimed time of 10**12 seconds (year ~33,658) is already nonsense.
def test_a_time_claim_of_ten_to_the_twelve_is_not_a_number_of_seconds(oidc):
    with pytest.raises(OIDCVerificationError, match="its 'nbf' claim is not a number"):
        verify_push_token(oidc.header(nbf=10**12))


# PushTokenVerifier._verified_claims mutants 19, 22, 23: a JWK-set certificates URL without
# PyJWT refuses every push, so it is an ERROR naming the fix. (PyJWT is not a dependency; if
# it is ever installed this test must change, not skip.)
def test_a_jwk_set_url_without_pyjwt_names_the_fix(oidc, settings, caplog):
    assert importlib.util.find_spec("jwt") is None, "PyJWT is installed: rewrite this test"
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url(oidc.server.JWKS_PATH)

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        with pytest.raises(OIDCVerificationError) as refused:
            verify_push_token(oidc.header())

    assert str(refused.value).startswith(
        f"Could not verify push tokens against {settings.TASKS_OIDC_CERTS_URL} (")
    assert "(The pyjwt library is not installed" in str(refused.value)
    assert str(refused.value).endswith(
        "Point TASKS_OIDC_CERTS_URL at an endpoint serving PEM certificates such as Google's "
        "default, or install PyJWT.")
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


# PushTokenVerifier.verify mutant 29: when the remembered tokens are full, the one used least
# recently is forgotten, never the one just verified (Pub/Sub's current token).
def test_the_least_recently_used_token_is_forgotten_first(oidc, settings):
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url(oidc.server.NO_STORE_PATH)
    size = PushTokenVerifier.verified_cache_size
    headers = [oidc.header(sub=f"subject-{n}") for n in range(size + 1)]
    for header in headers:
        verify_push_token(header)
    assert oidc.hits == size + 1  # each token verified once, fetching the certificates

    verify_push_token(headers[-1])
    assert oidc.hits == size + 1  # the newest is remembered
    verify_push_token(headers[0])
    assert oidc.hits == size + 2  # the oldest was forgotten, so it is verified again


# _required_settings mutants 6, 21: a missing setting refuses every push, so it is logged as
# an ERROR, like unreachable certificates, not as a WARNING like one bad request.
@pytest.mark.parametrize("setting", ["TASKS_OIDC_AUDIENCE", "TASKS_SERVICE_ACCOUNT"])
def test_a_missing_setting_is_logged_as_an_error(oidc, settings, caplog, setting):
    header = oidc.header()
    setattr(settings, setting, "")
    if setting == "TASKS_OIDC_AUDIENCE":
        settings.CLOUD_RUN_SERVICE_URL = ""  # the audience's fallback

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        with pytest.raises(OIDCVerificationError, match=setting):
            verify_push_token(header)

    assert [r.levelno for r in caplog.records] == [logging.ERROR]


# PushTokenVerifier._verified_claims mutant 18: the refusal quotes why the certificates could
# not be fetched, not just that they could not.
def test_unfetchable_certificates_say_why(oidc, settings):
    settings.TASKS_OIDC_CERTS_URL = url = oidc.server.url("/gone")

    with pytest.raises(OIDCVerificationError) as refused:
        verify_push_token(oidc.header())

    assert str(refused.value) == (
        f"Could not fetch the certificates for verifying push tokens (Could not fetch "
        f"certificates at {url}). Check that TASKS_OIDC_CERTS_URL ({url}) is reachable.")
