"""qalign_client.webhooks: Standard Webhooks verification, checked against signatures computed with
openssl (not with this code):

    printf '%s' "msg_1.1767225600.$BODY" | openssl dgst -sha256 -mac HMAC \
        -macopt hexkey:$(printf MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw | base64 -d | xxd -p -c 256) -binary | base64
"""

from __future__ import annotations

import pytest

from qalign_client import WebhookVerificationError
from qalign_client.webhooks import sign, signing_key, verify

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = (
    b'{"id":"job_1","status":"succeeded","stage":"done","progress":1.0,"created_at":"2026-01-01T00:00:00Z",'
    b'"started_at":null,"finished_at":null,"params":{},"result":null,"error":null,"metrics":{}}'
)
STAMP = 1767225600
#: openssl over f"msg_1.{STAMP}." + BODY, key = base64-decoded whsec_ rest / the plain secret's bytes.
WHSEC_SIGNATURE = "v1,IreABlqcnWGWI9N02QRtgdmERaRwoKuaZOtf0frq24o="
PLAIN_SIGNATURE = "v1,CbuS5Pb6rIM+e9kmn8UrV7H/xFlM7aO/XikIHZqvZLk="


def headers(signature: str, webhook_id: str = "msg_1", stamp: int = STAMP) -> dict[str, str]:
    return {"webhook-id": webhook_id, "webhook-timestamp": str(stamp), "webhook-signature": signature}


def test_the_published_standard_webhooks_vector():
    """The example of the Standard Webhooks specification (also reproduced with openssl)."""
    body = b'{"test": 2432232314}'
    assert sign(WHSEC, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize("secret,signature", [(WHSEC, WHSEC_SIGNATURE), ("plain-secret", PLAIN_SIGNATURE)])
def test_a_valid_delivery_gives_the_job(secret, signature):
    job = verify(secret, headers(signature), BODY, now=STAMP + 10)
    assert job.id == "job_1" and job.status == "succeeded" and job.finished


def test_header_names_are_case_insensitive_and_body_may_be_text():
    upper = {k.upper(): v for k, v in headers(WHSEC_SIGNATURE).items()}
    assert verify(WHSEC, upper, BODY.decode(), now=STAMP).id == "job_1"


def test_one_matching_signature_in_a_list_is_enough():
    listed = f"v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v2,whatever {WHSEC_SIGNATURE}"
    assert verify(WHSEC, headers(listed), BODY, now=STAMP).id == "job_1"


@pytest.mark.parametrize("offset", [301, -301, 3600])
def test_timestamps_outside_the_tolerance_are_refused(offset):
    with pytest.raises(WebhookVerificationError, match="tolerance 300 s"):
        verify(WHSEC, headers(WHSEC_SIGNATURE), BODY, now=STAMP + offset)
    verify(WHSEC, headers(WHSEC_SIGNATURE), BODY, tolerance=abs(offset) + 1, now=STAMP + offset)


def test_a_replay_with_a_new_timestamp_does_not_match():
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify(WHSEC, headers(WHSEC_SIGNATURE, stamp=STAMP + 100), BODY, now=STAMP + 100)


@pytest.mark.parametrize(
    "body",
    [BODY.replace(b'"succeeded"', b'"failed"'), BODY + b" ", BODY[:-1]],
    ids=["changed", "appended", "truncated"],
)
def test_a_tampered_body_is_refused(body):
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify(WHSEC, headers(WHSEC_SIGNATURE), body, now=STAMP)


def test_another_secret_or_id_is_refused():
    with pytest.raises(WebhookVerificationError):
        verify("whsec_" + "QUJD" * 8, headers(WHSEC_SIGNATURE), BODY, now=STAMP)
    with pytest.raises(WebhookVerificationError):
        verify(WHSEC, headers(WHSEC_SIGNATURE, webhook_id="msg_2"), BODY, now=STAMP)
    # The whsec_ secret is a base64 key, not text: used as text it does not match.
    with pytest.raises(WebhookVerificationError):
        verify(WHSEC.encode(), headers(WHSEC_SIGNATURE), BODY, now=STAMP)


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers_are_named(drop):
    given = {k: v for k, v in headers(WHSEC_SIGNATURE).items() if k != drop}
    with pytest.raises(WebhookVerificationError, match=f"missing header.*{drop}"):
        verify(WHSEC, given, BODY, now=STAMP)


def test_malformed_timestamp_and_body():
    with pytest.raises(WebhookVerificationError, match="not Unix seconds"):
        verify(WHSEC, {**headers(WHSEC_SIGNATURE), "webhook-timestamp": "yesterday"}, BODY, now=STAMP)
    body = b'{"not": "a job"}'
    with pytest.raises(WebhookVerificationError, match="not a job object"):
        verify(WHSEC, headers(sign(WHSEC, "msg_1", STAMP, body)), body, now=STAMP)


def test_signing_key():
    assert signing_key("plain") == b"plain" and signing_key(b"\x00raw") == b"\x00raw"
    assert signing_key("whsec_QUJD") == b"ABC"
    with pytest.raises(ValueError, match="base64"):
        signing_key("whsec_not base64!")
