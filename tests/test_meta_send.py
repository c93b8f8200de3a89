"""The Cloud API sender: body builders, the client, and the Graph error envelope.

The request shape is pinned by a vcrpy cassette (``fixtures/cassettes/cloud_api_send.yaml``,
replayed with ``record_mode="none"``, Authorization filtered). It was recorded against the
sandbox on loopback; set ``WACRM_RECORD_CASSETTES=1`` to record it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import vcr

from wacrm.config import Secret, Settings
from wacrm.sandbox.whatsapp import SandboxConfig, WhatsAppSandbox
from wacrm.whatsapp.errors import SendAction
from wacrm.whatsapp.meta_send import (
    CloudApiClient,
    ListRow,
    ListSection,
    ReplyButton,
    SendError,
    body_parameters,
    buttons_message,
    list_message,
    location_message,
    media_message,
    parse_retry_after,
    recipient,
    template_message,
    text_message,
    with_callback_data,
)

TOKEN = "EAAG-test-token-never-logged"
SECRET = "app-secret"
PNID = "106540352242922"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CASSETTES = Path(__file__).resolve().parent.parent / "fixtures" / "cassettes"
RECORD_HOST, RECORD_PORT = "127.0.0.1", 18765


# --- body builders -------------------------------------------------------------------------


def test_given_text_when_built_then_meta_shape_with_plus_and_country_code() -> None:
    body = text_message("16505551234", "Hi", preview_url=True, reply_to="wamid.IN")

    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+16505551234",
        "type": "text",
        "text": {"body": "Hi", "preview_url": True},
        "context": {"message_id": "wamid.IN"},
    }


def test_given_text_of_4096_when_built_then_ok_and_4097_is_a_clear_value_error() -> None:
    assert text_message("+16505551234", "é" * 4096)["text"]["body"] == "é" * 4096

    with pytest.raises(ValueError, match="4097 characters; the limit is 4096"):
        text_message("+16505551234", "x" * 4097)


@pytest.mark.parametrize("to", ["0612345678", "+0612", "call me", "", "+1 650"])
def test_given_number_without_country_code_when_built_then_value_error(to: str) -> None:
    with pytest.raises(ValueError, match="country code"):
        recipient(to)


def test_given_formatted_number_when_normalised_then_e164() -> None:
    assert recipient("+44 20 7946-0018") == "+442079460018"


def test_given_media_by_id_or_link_when_built_then_one_of_them_with_caption_and_filename() -> None:
    by_id = media_message("+16505551234", "document", media_id="123", filename="a.pdf")
    by_link = media_message("+16505551234", "image", link="https://x.test/a.png", caption="A")

    assert by_id["document"] == {"id": "123", "filename": "a.pdf"}
    assert by_link["image"] == {"link": "https://x.test/a.png", "caption": "A"}
    with pytest.raises(ValueError, match="exactly one"):
        media_message("+16505551234", "image", media_id="1", link="https://x.test/a.png")
    with pytest.raises(ValueError, match="exactly one"):
        media_message("+16505551234", "video")
    with pytest.raises(ValueError, match="caption"):
        media_message("+16505551234", "audio", media_id="1", caption="no")
    with pytest.raises(ValueError, match="filename"):
        media_message("+16505551234", "image", media_id="1", filename="a.png")
    with pytest.raises(ValueError, match="media kind"):
        media_message("+16505551234", "gif", media_id="1")  # type: ignore[arg-type]


def test_given_location_when_built_then_coordinates_checked() -> None:
    body = location_message("+16505551234", 51.5, -0.12, name="HQ", address="London")

    assert body["location"] == {
        "latitude": 51.5,
        "longitude": -0.12,
        "name": "HQ",
        "address": "London",
    }
    with pytest.raises(ValueError, match="valid range"):
        location_message("+16505551234", 91.0, 0.0)


def test_given_template_when_built_then_name_language_and_components() -> None:
    body = template_message("+16505551234", "order_update", "en_US", body_parameters("Ana", "42"))

    assert body["type"] == "template"
    assert body["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "42"}],
            }
        ],
    }


def test_given_reply_buttons_when_built_then_at_most_three_titles_up_to_20() -> None:
    body = buttons_message(
        "+16505551234",
        "Pick",
        [ReplyButton("yes", "Yes"), ReplyButton("no", "No")],
        header="Q",
        footer="F",
    )

    assert body["interactive"]["type"] == "button"
    assert body["interactive"]["action"]["buttons"][1] == {
        "type": "reply",
        "reply": {"id": "no", "title": "No"},
    }
    with pytest.raises(ValueError, match="give 1 to 3"):
        buttons_message("+16505551234", "Pick", [ReplyButton(str(i), str(i)) for i in range(4)])
    with pytest.raises(ValueError, match="button title is 21 characters; the limit is 20"):
        buttons_message("+16505551234", "Pick", [ReplyButton("a", "x" * 21)])
    with pytest.raises(ValueError, match="unique"):
        buttons_message("+16505551234", "Pick", [ReplyButton("a", "A"), ReplyButton("a", "B")])
    with pytest.raises(ValueError, match="footer"):
        buttons_message("+16505551234", "Pick", [ReplyButton("a", "A")], footer="x" * 61)


def test_given_list_when_built_then_sections_rows_and_limits() -> None:
    rows = tuple(ListRow(f"r{i}", f"Row {i}", "desc") for i in range(3))
    body = list_message("+16505551234", "Choose", "Options", [ListSection("Plans", rows)])

    action = body["interactive"]["action"]
    assert body["interactive"]["type"] == "list"
    assert action["button"] == "Options"
    assert action["sections"][0]["rows"][0] == {"id": "r0", "title": "Row 0", "description": "desc"}
    many = tuple(ListRow(f"r{i}", f"Row {i}") for i in range(11))
    with pytest.raises(ValueError, match="11 rows"):
        list_message("+16505551234", "Choose", "Options", [ListSection("A", many)])
    with pytest.raises(ValueError, match="row title"):
        list_message("+16505551234", "C", "O", [ListSection(None, (ListRow("a", "x" * 25),))])
    with pytest.raises(ValueError, match="section needs a title"):
        list_message(
            "+16505551234",
            "C",
            "O",
            [ListSection("A", rows[:1]), ListSection(None, rows[1:])],
        )


def test_given_callback_data_when_added_then_copy_carries_it_and_limit_checked() -> None:
    body = text_message("+16505551234", "Hi")

    tagged = with_callback_data(body, "outbox:1")

    assert tagged["biz_opaque_callback_data"] == "outbox:1"
    assert "biz_opaque_callback_data" not in body
    with pytest.raises(ValueError, match="512"):
        with_callback_data(body, "x" * 513)


# --- the client over a scripted transport --------------------------------------------------


def scripted(*responses: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if not queue:
            pytest.fail(f"unexpected request {request.method} {request.url}")
        return queue.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def client_with(http: httpx.Client | httpx.AsyncClient) -> CloudApiClient:
    settings = Settings(
        whatsapp_api_base_url="http://graph.test/",
        whatsapp_api_version="v25.0",
        whatsapp_access_token=Secret(TOKEN),
    )
    return CloudApiClient(settings, http=http, clock=lambda: NOW)


def graph_error(status: int, **error: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": "OAuthException", **error}})


def test_given_200_when_send_then_result_and_request_shape() -> None:
    http, seen = scripted(
        httpx.Response(
            200,
            json={
                "messaging_product": "whatsapp",
                "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
                "messages": [{"id": "wamid.ABC", "message_status": "accepted"}],
            },
        )
    )
    body = text_message("+16505551234", "Hi")

    result = client_with(http).send(PNID, body)

    assert (result.provider_message_id, result.wa_id, result.input, result.message_status) == (
        "wamid.ABC",
        "16505551234",
        "+16505551234",
        "accepted",
    )
    (request,) = seen
    assert str(request.url) == f"http://graph.test/v25.0/{PNID}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert httpx.Response(200, content=request.content).json() == body


def test_given_graph_error_envelope_when_send_then_send_error_with_every_field() -> None:
    http, _ = scripted(
        graph_error(
            400,
            message="(#131056) (Business Account, Consumer Account) pair rate limit hit",
            code=131056,
            error_subcode=2494010,
            error_data={"messaging_product": "whatsapp", "details": "Too many to this user"},
            fbtrace_id="AbCdEf",
        )
    )

    with pytest.raises(SendError) as caught:
        client_with(http).send(PNID, text_message("+16505551234", "Hi"))

    err = caught.value
    assert (err.code, err.subcode, err.http_status, err.fbtrace_id) == (
        131056,
        2494010,
        400,
        "AbCdEf",
    )
    assert err.details == "Too many to this user"
    assert err.title == "Pair rate limit hit"
    assert err.message.startswith("(#131056)")
    assert err.action is SendAction.DELAY_RECIPIENT
    assert "131056" in str(err) and "Too many to this user" in str(err)


def test_given_unknown_code_when_send_then_title_is_metas_message_and_action_retry() -> None:
    http, _ = scripted(graph_error(400, message="Something new", code=777777))

    with pytest.raises(SendError) as caught:
        client_with(http).send(PNID, text_message("+16505551234", "Hi"))

    assert caught.value.title == "Something new"
    assert caught.value.action is SendAction.RETRY_BACKOFF


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": "Sun, 01 Mar 2026 12:02:00 GMT"}, 120.0),
        (
            {
                "X-Business-Use-Case-Usage": '{"1":[{"type":"whatsapp_business_management",'
                '"call_count":100,"estimated_time_to_regain_access":5}]}'
            },
            300.0,
        ),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_given_throttled_response_when_send_then_retry_after_seconds(
    headers: dict[str, str], expected: float | None
) -> None:
    response = graph_error(400, message="(#4) Application request limit reached", code=4)
    response.headers.update(headers)
    http, _ = scripted(response)

    with pytest.raises(SendError) as caught:
        client_with(http).send(PNID, text_message("+16505551234", "Hi"))

    assert caught.value.retry_after == expected


def test_given_retry_after_in_the_past_when_parsed_then_zero() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", NOW) == 0.0


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, text="<html>Bad Gateway</html>"),
        httpx.Response(500, json={"unexpected": True}),
        httpx.Response(200, json={"messaging_product": "whatsapp", "messages": []}),
        httpx.Response(200, text="not json"),
    ],
    ids=["502 html", "500 json without error", "200 without id", "200 not json"],
)
def test_given_non_graph_answer_when_send_then_send_error_without_code_retried(
    response: httpx.Response,
) -> None:
    http, _ = scripted(response)

    with pytest.raises(SendError) as caught:
        client_with(http).send(PNID, text_message("+16505551234", "Hi"))

    assert caught.value.code is None
    assert caught.value.http_status == response.status_code
    assert caught.value.action is SendAction.RETRY_BACKOFF


def test_given_network_failure_when_send_then_send_error_without_secrets() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout(f"timed out sending {request.headers['authorization']}")

    client = client_with(httpx.Client(transport=httpx.MockTransport(boom)))

    with pytest.raises(SendError) as caught:
        client.send(PNID, text_message("+16505551234", "Hi"))

    err = caught.value
    assert (err.code, err.http_status, err.action) == (None, None, SendAction.RETRY_BACKOFF)
    assert err.message == "ConnectTimeout"
    assert TOKEN not in f"{err} {err!r} {err.summary} {err.message} {err.__cause__}"


def test_given_client_when_repr_or_401_then_token_never_shown() -> None:
    http, _ = scripted(
        graph_error(401, message="Invalid OAuth access token - Cannot parse access token", code=190)
    )
    client = client_with(http)

    with pytest.raises(SendError) as caught:
        client.send(PNID, text_message("+16505551234", "Hi"))

    assert caught.value.action is SendAction.REFRESH_CREDENTIALS
    assert TOKEN not in repr(client)
    assert TOKEN not in str(caught.value) + repr(caught.value)


def test_given_async_http_client_when_sync_send_then_type_error() -> None:
    with pytest.raises(TypeError, match="asend"):
        client_with(httpx.AsyncClient()).send(PNID, text_message("+16505551234", "Hi"))


def test_given_no_settings_and_no_base_url_when_created_then_value_error() -> None:
    with pytest.raises(ValueError, match="base_url"):
        CloudApiClient(http=httpx.Client())


def test_given_explicit_values_when_created_then_they_win_over_settings() -> None:
    client = CloudApiClient(
        Settings(), http=httpx.Client(), base_url="http://127.0.0.1:9/", version="v23.0"
    )

    assert client.messages_url("1") == "http://127.0.0.1:9/v23.0/1/messages"


# --- against the sandbox -------------------------------------------------------------------


def sandbox_config() -> SandboxConfig:
    return SandboxConfig(access_token=TOKEN, app_secret=SECRET, phone_numbers={PNID: "15550783881"})


async def test_given_async_client_when_asend_to_sandbox_then_wamid_and_graph_errors() -> None:
    sandbox = WhatsAppSandbox(sandbox_config())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as http:
        client = CloudApiClient(
            base_url="http://sandbox.test", version="v25.0", access_token=TOKEN, http=http
        )
        result = await client.asend(PNID, text_message("+16505551234", "Hi"))
        with pytest.raises(SendError) as caught:
            await client.asend(PNID, {**text_message("+16505551234", "Hi"), "to": "0612"})
        with pytest.raises(TypeError, match="send"):
            client.send(PNID, {})

    assert result.provider_message_id == sandbox.sent[0].wamid
    assert (caught.value.code, caught.value.action) == (131009, SendAction.FIX_REQUEST)
    assert caught.value.details and "country code" in caught.value.details


# --- recorded HTTP: the request shape, pinned -----------------------------------------------


@pytest.fixture
def loopback_sandbox() -> Iterator[str]:
    """A real sandbox on loopback when recording; otherwise just its (unused) address."""
    base = f"http://{RECORD_HOST}:{RECORD_PORT}"
    if not os.environ.get("WACRM_RECORD_CASSETTES"):
        yield base
        return
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            WhatsAppSandbox(sandbox_config()).app,
            host=RECORD_HOST,
            port=RECORD_PORT,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def cassette_vcr() -> vcr.VCR:
    return vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        record_mode="all" if os.environ.get("WACRM_RECORD_CASSETTES") else "none",
        filter_headers=["authorization"],
        match_on=["method", "scheme", "host", "port", "path", "body"],
        decode_compressed_response=True,
    )


def test_given_recorded_cloud_api_when_sending_then_request_shape_is_pinned(
    loopback_sandbox: str,
) -> None:
    body = with_callback_data(
        template_message("+16505551234", "order_update", "en_US", body_parameters("Ana")), "17"
    )
    bad = {**text_message("+16505551234", "Hi"), "to": "0612345678"}

    with httpx.Client() as http, cassette_vcr().use_cassette("cloud_api_send.yaml") as cassette:
        client = CloudApiClient(
            base_url=loopback_sandbox, version="v25.0", access_token=TOKEN, http=http
        )
        result = client.send(PNID, body)
        with pytest.raises(SendError) as caught:
            client.send(PNID, bad)

    assert cassette.all_played or os.environ.get("WACRM_RECORD_CASSETTES")
    assert result.provider_message_id.startswith("wamid.")
    assert result.wa_id == "16505551234"
    assert caught.value.code == 131009
    recorded = (CASSETTES / "cloud_api_send.yaml").read_text()
    assert TOKEN not in recorded
    assert "uthorization" not in recorded


# --- media (phase 2): upload, look-up, download ---------------------------------------------


def sync_into(sandbox: WhatsAppSandbox) -> httpx.Client:
    """A sync httpx client whose requests are served by the sandbox's ASGI app."""

    async def call(request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sandbox.app)) as client:
            answer = await client.request(
                request.method, request.url, headers=request.headers, content=request.content
            )
        return httpx.Response(
            answer.status_code,
            headers={"content-type": answer.headers.get("content-type", "")},
            content=answer.content,
        )

    return httpx.Client(transport=httpx.MockTransport(lambda r: asyncio.run(call(r))))


def sandbox_client(sandbox: WhatsAppSandbox, token: str = TOKEN) -> CloudApiClient:
    return CloudApiClient(
        base_url="http://sandbox.test", version="v25.0", access_token=token, http=sync_into(sandbox)
    )


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def test_given_uploaded_image_when_sent_by_id_then_accepted_and_downloadable() -> None:
    sandbox = WhatsAppSandbox(sandbox_config())
    client = sandbox_client(sandbox)

    media_id = client.upload_media(PNID, PNG, "image/png", "logo.png")
    result = client.send(PNID, media_message("+16505551234", "image", media_id=media_id))
    info = client.media_info(media_id)
    data = client.download_media(info.url)

    assert result.provider_message_id == sandbox.sent[0].wamid
    assert sandbox.sent[0].body["image"] == {"id": media_id}
    assert (info.mime_type, info.file_size) == ("image/png", len(PNG))
    assert info.sha256 == hashlib.sha256(PNG).hexdigest()
    assert data == PNG


# RIFF, size, WEBP, an extended header (VP8X) with the animation flag set.
ANIMATED_WEBP_HEAD = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x02"


@pytest.mark.parametrize(
    ("content", "mime", "why"),
    [
        (b"x" * (5 * 1024 * 1024 + 1), "image/jpeg", "limit is 5242880"),
        (b"GIF89a", "image/gif", "Unsupported media type"),
        (ANIMATED_WEBP_HEAD.ljust(500 * 1024 + 1, b"x"), "image/webp", "limit is 512000"),
        (b"x" * (100 * 1024 + 1), "image/webp", "limit is 102400"),
    ],
    ids=[
        "image over 5 MB",
        "gif not allowed",
        "animated sticker over 500 KB",
        "static over 100 KB",
    ],
)
def test_given_media_over_limit_or_wrong_type_when_uploaded_then_131053(
    content: bytes, mime: str, why: str
) -> None:
    client = sandbox_client(WhatsAppSandbox(sandbox_config()))

    with pytest.raises(SendError) as caught:
        client.upload_media(PNID, content, mime)

    assert caught.value.code == 131053
    assert caught.value.details and why in caught.value.details
    assert caught.value.action is SendAction.FIX_REQUEST


def test_given_pdf_id_when_sent_as_image_then_131053() -> None:
    sandbox = WhatsAppSandbox(sandbox_config())
    client = sandbox_client(sandbox)
    media_id = client.upload_media(PNID, b"%PDF-1.4", "application/pdf", "a.pdf")

    with pytest.raises(SendError) as caught:
        client.send(PNID, media_message("+16505551234", "image", media_id=media_id))

    assert caught.value.code == 131053
    assert sandbox.sent == []


def test_given_media_url_after_5_minutes_when_downloaded_then_404_and_new_url_works() -> None:
    now = [1_750_000_000.0]
    sandbox = WhatsAppSandbox(sandbox_config(), clock=lambda: now[0])
    client = sandbox_client(sandbox)
    media_id = client.upload_media(PNID, PNG, "image/png")
    old_url = client.media_info(media_id).url

    now[0] += 300
    with pytest.raises(SendError) as caught:
        client.download_media(old_url)
    fresh = client.download_media(client.media_info(media_id).url)

    assert caught.value.http_status == 404
    assert fresh == PNG


def test_given_wrong_token_or_unknown_id_when_media_calls_then_graph_errors() -> None:
    sandbox = WhatsAppSandbox(sandbox_config())
    media_id = sandbox_client(sandbox).upload_media(PNID, PNG, "image/png")

    with pytest.raises(SendError) as bad_token:
        sandbox_client(sandbox, token="nope").media_info(media_id)
    with pytest.raises(SendError) as unknown:
        sandbox_client(sandbox).media_info("123")

    assert bad_token.value.code == 190
    assert (unknown.value.code, unknown.value.subcode) == (100, 33)
