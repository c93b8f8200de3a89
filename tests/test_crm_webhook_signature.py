"""HubSpot's v3 webhook signature: our check against the simulator's signer and against
HubSpot's own SDK (``hubspot.utils.signature.Signature``), which computes it independently."""

from __future__ import annotations

import time

import pytest
from hubspot.exceptions import InvalidSignatureTimestampError
from hubspot.utils.signature import Signature

from wacrm.sandbox.crm import sign_v3
from wacrm.server.crm_webhook import (
    MAX_SKEW_MS,
    SignatureError,
    hubspot_v3_signature,
    signed_uri,
    verify_hubspot_v3,
)

SECRET = "b9a1c1e3-0000-4d5e-9f00-5ecre7c11en7"
URL = "https://hooks.example.com/webhooks/crm"
BODY = b'[{"eventId":1,"portalId":62515,"subscriptionType":"contact.propertyChange"}]'
NOW = 1_795_597_200_000


def _verify(
    *,
    body: bytes = BODY,
    url: str = URL,
    signature: str | None = None,
    timestamp: int = NOW,
    now: int = NOW,
    secret: str = SECRET,
) -> None:
    verify_hubspot_v3(
        secret=secret,
        method="POST",
        url=url,
        body=body,
        signature=signature
        if signature is not None
        else sign_v3(SECRET, "POST", url, body, timestamp),
        timestamp=str(timestamp),
        now_ms=now,
    )


def test_given_a_simulator_signed_request_when_verified_then_accepted() -> None:
    _verify()


def test_given_the_wrong_secret_when_verified_then_refused_without_showing_it() -> None:
    with pytest.raises(SignatureError, match="does not match") as caught:
        _verify(secret="another-secret")
    assert SECRET not in str(caught.value)


def test_given_a_tampered_body_when_verified_then_refused() -> None:
    signature = sign_v3(SECRET, "POST", URL, BODY, NOW)
    with pytest.raises(SignatureError, match="does not match"):
        _verify(body=BODY.replace(b"62515", b"62516"), signature=signature)


def test_given_a_timestamp_older_than_5_minutes_when_verified_then_refused() -> None:
    _verify(timestamp=NOW - MAX_SKEW_MS)  # exactly 5 minutes: still inside
    with pytest.raises(SignatureError, match="more than 5 minutes old"):
        _verify(timestamp=NOW - MAX_SKEW_MS - 1)


def test_given_a_far_future_timestamp_when_verified_then_refused() -> None:
    with pytest.raises(SignatureError, match="ahead of our clock"):
        _verify(timestamp=NOW + MAX_SKEW_MS + 1)


@pytest.mark.parametrize("timestamp", [None, "", "17955972e5", "-1", "１２３"])
def test_given_a_missing_or_malformed_timestamp_then_refused(timestamp: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_hubspot_v3(
            secret=SECRET,
            method="POST",
            url=URL,
            body=BODY,
            signature=sign_v3(SECRET, "POST", URL, BODY, NOW),
            timestamp=timestamp,
            now_ms=NOW,
        )


def test_given_a_missing_signature_then_refused() -> None:
    with pytest.raises(SignatureError, match="missing"):
        verify_hubspot_v3(
            secret=SECRET, method="POST", url=URL, body=BODY, signature=None,
            timestamp=str(NOW), now_ms=NOW,
        )  # fmt: skip


def test_given_a_uri_with_a_query_string_then_the_listed_characters_are_signed_decoded() -> None:
    url = f"{URL}?portal=62515&next=a%3Ab%2Fc%40d&space=a%20b&hash=%23x"
    # HubSpot decodes %3A %2F %40 (…) before signing; %20 and %23 are not in its table.
    assert signed_uri(url) == f"{URL}?portal=62515&next=a:b/c@d&space=a%20b&hash=%23x"
    signature = sign_v3(SECRET, "POST", url, BODY, NOW)
    _verify(url=url, signature=signature)
    # Signed over the query as sent (nothing decoded), it would not match: decoding matters.
    undecoded = Signature.get_signature(
        SECRET, BODY.decode(), "v3", http_uri=url, http_method="POST", timestamp=str(NOW)
    )
    with pytest.raises(SignatureError):
        _verify(url=url, signature=undecoded)
    # A different query is a different request.
    with pytest.raises(SignatureError):
        _verify(url=url.replace("portal=62515", "portal=1"), signature=signature)


@pytest.mark.parametrize(
    ("url", "body"),
    [
        (URL, BODY),
        (f"{URL}?a=1&b=two", BODY),
        ("http://127.0.0.1:8000/webhooks/crm/hubspot", b""),
        (URL, '[{"propertyValue":"São Paulo — ✓"}]'.encode()),
    ],
)
def test_given_hubspot_sdk_when_it_computes_the_v3_signature_then_ours_is_the_same(
    url: str, body: bytes
) -> None:
    sdk = Signature.get_signature(
        SECRET, body.decode(), "v3", http_uri=url, http_method="POST", timestamp=str(NOW)
    )

    assert hubspot_v3_signature(SECRET, "POST", url, body, str(NOW)) == sdk
    assert sign_v3(SECRET, "POST", url, body, NOW) == sdk


def test_given_a_simulator_signature_when_the_hubspot_sdk_checks_it_then_valid() -> None:
    now = int(time.time() * 1000)  # the SDK reads the real clock
    signature = sign_v3(SECRET, "POST", URL, BODY, now)

    assert Signature.is_valid(
        signature, SECRET, BODY.decode(), URL, "POST", signature_version="v3", timestamp=str(now)
    )
    assert not Signature.is_valid(
        signature, "wrong", BODY.decode(), URL, "POST", signature_version="v3", timestamp=str(now)
    )
    # The SDK refuses a stale request too; so do we (both at the same 5-minute mark).
    stale = now - MAX_SKEW_MS - 1000
    with pytest.raises(InvalidSignatureTimestampError):
        Signature.is_valid(
            sign_v3(SECRET, "POST", URL, BODY, stale), SECRET, BODY.decode(), URL, "POST",
            signature_version="v3", timestamp=str(stale),
        )  # fmt: skip
    with pytest.raises(SignatureError):
        _verify(timestamp=stale, now=now)
