"""OIDC verification of push requests, against real RS256 tokens and a local certs server."""

import base64
import importlib.util
import json
import logging
import time
from typing import NamedTuple

import hypothesis
import pytest
import requests
from cachecontrol import CacheControlAdapter
from hypothesis import strategies as st

from gyrinx_tasks.auth import (
    CERTS_TIMEOUT,
    PushTokenVerifier,
    get_verifier,
    reset_verifier,
    verify_push_token,
)
from gyrinx_tasks.conf import tasks_settings
from gyrinx_tasks.exceptions import OIDCVerificationError

pytestmark = pytest.mark.clock

pytest_plugins = ["tests.oidc"]  # the oidc fixtures

SERVICE_ACCOUNT = "pubsub-invoker@test-project.iam.gserviceaccount.com"
AUDIENCE = "https://tasks-test.example.run.app/tasks/pubsub/"


class Ago(NamedTuple):
    """A claim's time, ``seconds`` before the clock when the test runs (negative: after)."""

    seconds: int


def test_valid_token_returns_its_claims(oidc):
    claims = verify_push_token(oidc.header())

    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["aud"] == AUDIENCE
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email_verified"] is True
    assert claims["sub"] == "1234567890"


def test_issuer_without_scheme_is_google_too(oidc):
    assert verify_push_token(oidc.header(iss="accounts.google.com"))["iss"] == (
        "accounts.google.com"
    )


def test_explicit_audience_setting_is_used(oidc, settings):
    settings.TASKS_OIDC_AUDIENCE = "https://custom.example.com/push"

    verify_push_token(oidc.header(aud="https://custom.example.com/push"))
    with pytest.raises(OIDCVerificationError, match="wrong audience"):
        verify_push_token(oidc.header(aud=AUDIENCE))


def test_small_clock_skew_is_tolerated(oidc):
    # Google's clock a few seconds ahead of ours must not reject its tokens.
    verify_push_token(oidc.header(iat=int(time.time()) + 5))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://elsewhere.example.com/tasks/pubsub/"}, "wrong audience"),
        ({"iss": "https://evil.example.com"}, "issued by 'https://evil.example.com'"),
        # Times relative to the clock when the test runs (Ago): a time read at collection is
        # an hour stale after an hour's run, and wrong on a clock moved since (CI's clock
        # run, GYRINX_TEST_CLOCK_AT; docs/testing.md "Time").
        ({"iat": Ago(7200), "exp": Ago(3600)}, "Token expired"),
        ({"iat": Ago(-3600)}, "Token used too early"),
        (
            {"email": "someone-else@test-project.iam.gserviceaccount.com"},
            "'someone-else@test-project.iam.gserviceaccount.com', not TASKS_SERVICE_ACCOUNT",
        ),
        ({"email_verified": False}, "not verified"),
        ({"email_verified": "false"}, "not verified"),
    ],
    ids=[
        "wrong-audience",
        "wrong-issuer",
        "expired",
        "issued-in-future",
        "other-service-account",
        "email-unverified",
        "email-unverified-string",
    ],
)
def test_bad_claims_are_rejected(oidc, claims, reason):
    now = int(time.time())
    claims = {name: now - value.seconds if isinstance(value, Ago) else value
              for name, value in claims.items()}
    with pytest.raises(OIDCVerificationError, match=reason):
        verify_push_token(oidc.header(**claims))


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ("aud", "wrong audience"),
        ("iss", "issued by None"),
        ("iat", "required claim iat"),
        ("exp", "required claim exp"),
        ("email", "is for None, not TASKS_SERVICE_ACCOUNT"),
        ("email_verified", "not verified"),
    ],
)
def test_missing_claims_are_rejected(oidc, claim, reason):
    with pytest.raises(OIDCVerificationError, match=reason):
        verify_push_token(oidc.header(**{claim: oidc.OMIT}))


def test_other_key_signature_is_rejected(oidc):
    with pytest.raises(OIDCVerificationError, match="Could not verify token signature"):
        verify_push_token(f"Bearer {oidc.other_key_token()}")


def test_unknown_key_id_is_rejected(oidc):
    token = oidc.server.key.sign(oidc.claims(), kid="some-other-kid")

    with pytest.raises(OIDCVerificationError, match="some-other-kid not found"):
        verify_push_token(f"Bearer {token}")


def test_tampered_payload_is_rejected(oidc):
    header, _, signature = oidc.token().split(".")
    _, payload, _ = oidc.token(email="attacker@example.com").split(".")

    with pytest.raises(OIDCVerificationError, match="Could not verify token signature"):
        verify_push_token(f"Bearer {header}.{payload}.{signature}")


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "no Authorization header"),
        ("", "no Authorization header"),
        ("   ", "no Authorization header"),
        ("Basic dXNlcjpwYXNz", "'Basic' scheme"),
        ("Bearer", "carries no token"),
        ("Bearer   ", "carries no token"),
        ("Bearer not-a-jwt", "not a well-formed JWT"),
        ("Bearer aaaa.bbbb.cccc", "not a well-formed JWT"),
        ("Bearer aaaa.bbbb.cccc extra", "nothing after it"),
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "basic",
        "bearer-alone",
        "bearer-blank",
        "garbage",
        "three-garbage-segments",
        "trailing-junk",
    ],
)
def test_bad_authorization_headers_are_rejected(oidc, authorization, reason):
    with pytest.raises(OIDCVerificationError, match=reason):
        verify_push_token(authorization)


def test_scheme_is_case_insensitive(oidc):
    verify_push_token(f"bearer {oidc.token()}")


def test_certificates_are_fetched_once_for_many_verifications(oidc):
    for _ in range(3):
        verify_push_token(oidc.header())
    with pytest.raises(OIDCVerificationError):
        verify_push_token(f"Bearer {oidc.other_key_token()}")

    assert oidc.hits == 1


def test_certificates_are_cached_only_as_their_headers_allow(oidc, settings):
    # Guards the test above: without a cacheable response every verification fetches.
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url(oidc.server.NO_STORE_PATH)

    # Two different tokens: the same token twice is not verified again at all (below).
    verify_push_token(oidc.header(sub="first"))
    verify_push_token(oidc.header(sub="second"))

    assert oidc.hits == 2


def test_a_verified_token_is_not_verified_again_until_it_expires(oidc, settings, monkeypatch):
    # Pub/Sub sends one token with every push for an hour: its signature is checked once.
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url(oidc.server.NO_STORE_PATH)
    header = oidc.header()

    first = verify_push_token(header)
    second = verify_push_token(header)
    assert oidc.hits == 1
    assert second == first
    second["email"] = "changed by the caller"
    assert verify_push_token(header)["email"] == SERVICE_ACCOUNT  # callers get a copy

    # A different token (even one byte) is verified on its own.
    with pytest.raises(OIDCVerificationError, match="signature"):
        verify_push_token(header[:-2] + ("A" if header[-2] != "A" else "B") + header[-1])

    # Past exp (and the clock skew), the remembered token is refused like any expired one.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600 + 11)
    with pytest.raises(OIDCVerificationError, match="Token expired"):
        verify_push_token(header)


def test_a_remembered_token_is_still_checked_against_the_settings(oidc, settings):
    header = oidc.header()
    verify_push_token(header)

    settings.TASKS_SERVICE_ACCOUNT = "someone-else@test-project.iam.gserviceaccount.com"
    with pytest.raises(OIDCVerificationError, match="not TASKS_SERVICE_ACCOUNT"):
        verify_push_token(header)
    settings.TASKS_OIDC_AUDIENCE = "https://custom.example.com/push"
    with pytest.raises(OIDCVerificationError, match="wrong audience"):
        verify_push_token(header)


def test_rejected_tokens_are_not_remembered(oidc):
    header = f"Bearer {oidc.other_key_token()}"
    for _ in range(2):
        with pytest.raises(OIDCVerificationError, match="signature"):
            verify_push_token(header)


def test_remembered_tokens_are_bounded(oidc):
    verifier = get_verifier()
    for n in range(verifier.verified_cache_size + 5):
        verify_push_token(oidc.header(sub=f"subject-{n}"))

    assert len(verifier._verified) == verifier.verified_cache_size


def test_reset_verifier_forgets_cached_certificates(oidc):
    verify_push_token(oidc.header())
    first = get_verifier()
    reset_verifier()
    verify_push_token(oidc.header())

    assert get_verifier() is not first
    assert get_verifier() is get_verifier()
    assert oidc.hits == 2


def test_unreachable_certificates_are_a_clear_error(oidc, settings, caplog):
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url("/gone")

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        with pytest.raises(OIDCVerificationError, match="Could not fetch the certificates"):
            verify_push_token(oidc.header())

    assert caplog.records[-1].levelno == logging.ERROR


def test_jwk_set_endpoint_is_rejected_not_crashed(oidc, settings):
    # google-auth handles JWK sets with PyJWT, which is optional; either way: a clean error.
    settings.TASKS_OIDC_CERTS_URL = oidc.server.url(oidc.server.JWKS_PATH)

    with pytest.raises(OIDCVerificationError):
        verify_push_token(oidc.header())


def test_missing_service_account_setting_is_a_clear_error(oidc, settings):
    header = oidc.header()
    settings.TASKS_SERVICE_ACCOUNT = ""

    with pytest.raises(OIDCVerificationError, match="TASKS_SERVICE_ACCOUNT is not set"):
        verify_push_token(header)


def test_missing_service_account_is_not_read_from_the_token(oidc, settings):
    # A token minted with an empty email must not slip through an unset setting.
    settings.TASKS_SERVICE_ACCOUNT = ""

    with pytest.raises(OIDCVerificationError, match="TASKS_SERVICE_ACCOUNT"):
        verify_push_token(oidc.header(email=""))


def test_missing_audience_is_a_clear_error(oidc, settings):
    header = oidc.header()
    settings.CLOUD_RUN_SERVICE_URL = ""
    settings.TASKS_OIDC_AUDIENCE = ""
    assert tasks_settings.TASKS_OIDC_AUDIENCE == ""

    with pytest.raises(OIDCVerificationError, match="Set TASKS_OIDC_AUDIENCE"):
        verify_push_token(header)


def test_rejections_are_logged_without_the_token(oidc, caplog):
    token = oidc.other_key_token()
    garbage = "not-a-jwt-but-maybe-a-secret"

    with caplog.at_level(logging.WARNING, logger="gyrinx_tasks"):
        for authorization in (f"Bearer {token}", f"Bearer {garbage}", f"Basic {garbage}"):
            with pytest.raises(OIDCVerificationError) as excinfo:
                verify_push_token(authorization)
            assert garbage not in str(excinfo.value)
            assert token not in str(excinfo.value)

    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3
    assert all(r.name == "gyrinx_tasks" for r in caplog.records)
    logged = caplog.text
    assert "Rejected a push request" in logged
    assert token not in logged
    for part in token.split("."):
        assert part not in logged
    assert garbage not in logged


def test_verifier_caches_its_session():
    verifier = PushTokenVerifier()

    assert verifier.request is verifier.request
    adapter = verifier.request.session.get_adapter("https://www.googleapis.com/oauth2/v1/certs")
    assert isinstance(adapter, CacheControlAdapter)


# Policy beyond google-auth (docs/security.md): nbf honoured, lifetime at most an hour, and
# claims of the wrong type refused as invalid rather than crashing verification.


def _signed(oidc, header: dict, claims: dict) -> str:
    """A token signed by the served key with an arbitrary header (google-auth adds typ/alg)."""
    from google.auth import crypt, jwt

    signer = crypt.RSASigner.from_string(oidc.server.key.private_pem, key_id=None)
    return jwt.encode(signer, claims, header=header).decode()


def test_nbf_in_the_future_is_rejected(oidc):
    with pytest.raises(OIDCVerificationError, match="not valid yet"):
        verify_push_token(oidc.header(nbf=int(time.time()) + 600))


def test_nbf_past_or_within_clock_skew_is_accepted(oidc):
    verify_push_token(oidc.header(nbf=int(time.time()) - 60))
    verify_push_token(oidc.header(nbf=int(time.time()) + 5))


def test_token_living_an_hour_is_accepted_and_longer_is_rejected(oidc):
    now = int(time.time())
    verify_push_token(oidc.header(iat=now, exp=now + 3600))
    with pytest.raises(OIDCVerificationError, match="lives 3601 s"):
        verify_push_token(oidc.header(iat=now, exp=now + 3601))
    with pytest.raises(OIDCVerificationError, match="longer than the 3600 s"):
        verify_push_token(oidc.header(iat=now - 60, exp=now + 86400 * 365))


def test_token_expiring_before_it_was_issued_is_rejected(oidc):
    now = int(time.time())
    with pytest.raises(OIDCVerificationError, match="expires before it was issued"):
        verify_push_token(oidc.header(iat=now + 8, exp=now + 5))


def test_max_lifetime_can_be_changed_on_the_verifier(oidc):
    now = int(time.time())
    verifier = PushTokenVerifier()
    verifier.max_lifetime_seconds = 600
    with pytest.raises(OIDCVerificationError, match="longer than the 600 s"):
        verifier.verify(oidc.header(iat=now, exp=now + 3600))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iat": "yesterday"}, "'iat' claim is not a number"),
        ({"exp": "soon"}, "'exp' claim is not a number"),
        ({"iat": None}, "'iat' claim is not a number"),
        ({"exp": [1]}, "'exp' claim is not a number"),
        ({"exp": {"at": 1}}, "'exp' claim is not a number"),
        ({"iat": True}, "'iat' claim is not a number"),
        ({"exp": float("nan")}, "'exp' claim is not a number"),
        ({"exp": float("inf")}, "'exp' claim is not a number"),
        ({"nbf": "later"}, "'nbf' claim is not a number"),
        ({"aud": 5}, "'aud' claim is not a string"),
        ({"aud": {"x": 1}}, "'aud' claim is not a string"),
        ({"aud": [AUDIENCE]}, "'aud' claim is not a string"),
        ({"email": ["a"]}, "not TASKS_SERVICE_ACCOUNT"),
        ({"iss": {"a": 1}}, "not Google"),
        ({"email_verified": {"yes": True}}, "not verified"),
        ({"iat": 10**400}, "'iat' claim is not a number"),  # overflows a float
    ],
)
def test_signed_claims_of_the_wrong_type_are_rejected_not_crashed(oidc, claims, reason):
    with pytest.raises(OIDCVerificationError, match=reason):
        verify_push_token(oidc.header(**claims))


@pytest.mark.parametrize(
    "header",
    [{"kid": {"a": 1}}, {"kid": ["gyrinx-test-key"]}, {"kid": 7}, {"alg": ["RS256"]}],
    ids=["kid-object", "kid-list", "kid-number", "alg-list"],
)
def test_signed_header_of_the_wrong_type_is_rejected_not_crashed(oidc, header):
    with pytest.raises(OIDCVerificationError, match="is not a string"):
        verify_push_token(f"Bearer {_signed(oidc, header, oidc.claims())}")


def test_list_audience_is_rejected_even_if_it_holds_ours(oidc):
    with pytest.raises(OIDCVerificationError, match="'aud' claim is not a string"):
        verify_push_token(oidc.header(aud=["https://other.example.com", AUDIENCE]))


_json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json = st.recursive(_json_leaf, lambda children: st.lists(children, max_size=3)
                     | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=6)


def _claim(good):
    return st.just(good) | st.just(OMIT_CLAIM) | _json


OMIT_CLAIM = object()


@hypothesis.settings(max_examples=100, deadline=None, database=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(data=st.data())
def test_any_signed_claims_give_claims_or_a_clear_rejection(oidc, data):
    now = int(time.time())
    good = oidc.claims()
    names = ["iss", "aud", "email", "email_verified", "sub", "iat", "exp", "nbf"]
    defaults = {**good, "nbf": now - 60}
    claims = {name: data.draw(_claim(defaults[name]), label=name) for name in names}
    claims = {name: value for name, value in claims.items() if value is not OMIT_CLAIM}
    header = data.draw(st.just({}) | st.fixed_dictionaries({"kid": _json}), label="header")
    token = _signed(oidc, header, claims) if header else oidc.server.key.sign(claims)

    try:
        verified = verify_push_token(f"Bearer {token}")
    except OIDCVerificationError as exc:
        assert str(exc).startswith(("The push token", "The Authorization"))
    else:
        # Accepted only when every claim is as Google sends it.
        assert verified["email"] == SERVICE_ACCOUNT
        assert verified["iss"] in ("https://accounts.google.com", "accounts.google.com")
        assert 0 <= verified["exp"] - verified["iat"] <= 3600
        assert verified["exp"] + 10 >= time.time()


# --- Found by mutation testing (mutmut, docs/testing.md): each comment names the mutants ---


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
