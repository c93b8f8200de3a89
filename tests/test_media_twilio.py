"""The media worker on Twilio attachments: a ``MediaUrl0`` fetched from the configured Twilio
API host with Basic auth, its redirect followed without credentials, the file stored under
its computed sha256; retried, refused, waiting and failing as Meta's are."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from test_media_worker import GRAPH, JPEG, T0, Clock, media_rows
from test_twilio_webhook import OUR_NUMBER, fixture

from wacrm.config import Secret
from wacrm.sandbox.twilio import TwilioSandbox
from wacrm.store.accounts import ensure_account, register_number
from wacrm.whatsapp.twilio_webhook import parse_twilio_message
from wacrm.workers.inbound import handle_message
from wacrm.workers.media import MediaWorker, media_states
from wacrm.workers.media_twilio import TwilioMediaAccount

SID = "AC" + "5" * 32
AUTH = "twilio-media-auth-token-do-not-log"
BASE = "http://twilio.sandbox"  # the configured WACRM_TWILIO_API_BASE_URL: the simulator
BASIC = base64.b64encode(f"{SID}:{AUTH}".encode()).decode()
CONFIGURED = TwilioMediaAccount(SID, Secret(AUTH), BASE)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"


def is_media(request: httpx.Request) -> bool:
    return "/Media/ME" in request.url.path


def is_cdn(request: httpx.Request) -> bool:
    return request.url.path.startswith("/_sandbox/twilio-media/")


class Recorder:
    """``httpx.MockTransport`` handler: the simulator, behind scripted faults; every request
    kept, to see where it went and with which headers."""

    def __init__(self, sandbox: TwilioSandbox) -> None:
        self.sandbox = sandbox
        self.requests: list[httpx.Request] = []
        self.rules: list[list[Any]] = []  # [predicate, status, remaining]

    def fail(self, predicate: Callable[[httpx.Request], bool], status: int, count: int) -> None:
        self.rules.append([predicate, status, count])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for rule in self.rules:
            if rule[2] > 0 and rule[0](request):
                rule[2] -= 1
                return httpx.Response(rule[1], json={"code": 20500, "status": rule[1]})
        return self.sandbox.handler(request)

    def hosts(self) -> list[str]:
        return [r.url.host for r in self.requests]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox() -> TwilioSandbox:
    return TwilioSandbox(SID, AUTH)


@pytest.fixture
def recorder(sandbox: TwilioSandbox) -> Recorder:
    return Recorder(sandbox)


@pytest.fixture
async def http(recorder: Recorder) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as client:
        yield client


@pytest.fixture
def twilio_account(engine: Engine) -> int:
    account = ensure_account(engine, "twilio-media")
    register_number(engine, account, OUR_NUMBER, provider="twilio")
    return account


def make_worker(
    engine: Engine,
    http: httpx.AsyncClient,
    tmp_path: Path,
    clock: Clock,
    twilio: TwilioMediaAccount | None = CONFIGURED,
    **kw: Any,
) -> MediaWorker:
    return MediaWorker(
        engine, http, graph_url=GRAPH, access_token=Secret("meta-token"),
        media_dir=tmp_path / "media", clock=clock, jitter=lambda: 1.0, twilio=twilio, **kw,
    )  # fmt: skip


def inbound(engine: Engine, account: int, media_url: str | None, **params: str) -> str:
    """An inbound Twilio image message, through the parser and the processor's message path
    as the inbox worker stores it; returns its MessageSid."""
    sid = "SM" + secrets.token_hex(16)
    form = {**fixture("inbound_image"), "MessageSid": sid, "SmsSid": sid, "AccountSid": SID}
    form.pop("MediaUrl0")
    form.update({"MediaUrl0": media_url} if media_url else {}, **params)
    message = parse_twilio_message({"message": form, "received_at": int(T0.timestamp())})
    with engine.begin() as conn:
        outcome = handle_message(conn, account_id=account, message=message, raw=form, now=T0)
    assert outcome.message_id is not None
    return sid


def hosted(sandbox: TwilioSandbox, data: bytes = JPEG, mime: str = "image/jpeg") -> str:
    return BASE + sandbox.add_media(data, mime)


# --- the happy path ------------------------------------------------------------------------


async def test_given_twilio_image_message_when_worker_runs_then_stored_by_computed_sha256(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox,
) -> None:  # fmt: skip
    inbound(engine, twilio_account, hosted(sandbox))
    digest = hashlib.sha256(JPEG).hexdigest()

    tried = await make_worker(engine, http, tmp_path, clock).run_once()

    assert tried == 1
    [row] = media_rows(engine)
    assert (row.provider, row.state, row.attempts, row.error) == ("twilio", "stored", 1, None)
    assert row.path == f"{twilio_account}/{digest}.jpg"
    assert (row.sha256, row.file_size, row.mime_type) == (digest, len(JPEG), "image/jpeg")
    stored = tmp_path / "media" / row.path
    assert stored.read_bytes() == JPEG
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary left
    assert media_states(engine) == {"stored": 1}  # what `wacrm media status` counts


async def test_given_no_content_type_in_form_when_stored_then_named_from_the_answer(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox,
) -> None:  # fmt: skip
    url = hosted(sandbox, PDF, "application/pdf")
    inbound(engine, twilio_account, url, MessageType="document", MediaContentType0="")

    await make_worker(engine, http, tmp_path, clock).run_once()

    [row] = media_rows(engine)
    assert (row.state, row.mime_type) == ("stored", "application/pdf")
    assert row.path == f"{twilio_account}/{hashlib.sha256(PDF).hexdigest()}.pdf"


async def test_given_redirect_to_cdn_when_fetched_then_followed_without_authorization(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder,
) -> None:  # fmt: skip
    sandbox.cdn_url = "https://mms.twiliocdn.test"
    inbound(engine, twilio_account, hosted(sandbox))

    await make_worker(engine, http, tmp_path, clock).run_once()

    api, cdn = recorder.requests
    assert (api.url.host, api.headers["authorization"]) == ("twilio.sandbox", f"Basic {BASIC}")
    assert (cdn.url.scheme, cdn.url.host) == ("https", "mms.twiliocdn.test")
    assert "authorization" not in cdn.headers
    assert not any(BASIC in v or AUTH in v for v in cdn.headers.values())
    assert [r.state for r in media_rows(engine)] == ["stored"]


async def test_given_simulator_served_over_asgi_when_worker_runs_then_stored(
    engine: Engine, twilio_account: int, tmp_path: Path, clock: Clock, sandbox: TwilioSandbox
) -> None:
    inbound(engine, twilio_account, hosted(sandbox))
    transport = httpx.ASGITransport(app=sandbox.app)

    async with httpx.AsyncClient(transport=transport) as http:
        await make_worker(engine, http, tmp_path, clock).run_once()

    [row] = media_rows(engine)
    assert (row.state, row.sha256) == ("stored", hashlib.sha256(JPEG).hexdigest())


# --- where the token may go ----------------------------------------------------------------


async def test_given_redirect_to_plain_http_elsewhere_when_fetched_then_refused_and_failed(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder,
) -> None:  # fmt: skip
    sandbox.cdn_url = "http://cdn.attacker.test"
    inbound(engine, twilio_account, hosted(sandbox))

    await make_worker(engine, http, tmp_path, clock).run_once()

    [row] = media_rows(engine)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "redirected to http://cdn.attacker.test, which is not https" in row.error
    assert recorder.hosts() == ["twilio.sandbox"]  # never asked
    assert list((tmp_path / "media" / str(twilio_account)).iterdir()) == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://evil.example{path}", "on https://evil.example, not on the configured"),
        ("https://twilio.sandbox{path}", "not on the configured Twilio API host"),  # scheme
        ("http://twilio.sandbox:8080{path}", "not on the configured Twilio API host"),  # port
        ("http://user:pw@twilio.sandbox{path}", "not on the configured Twilio API host"),
        ("http://twilio.sandbox{path}/../../../Messages.json", "not a Twilio Media resource"),
        ("http://twilio.sandbox/2010-04-01/Accounts.json", "not a Twilio Media resource"),
        ("http://twilio.sandbox{path}?x=1", "has a query"),
    ],
)
async def test_given_media_url_not_a_media_resource_on_the_api_host_then_failed_no_request(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder, url: str, reason: str,
) -> None:  # fmt: skip
    path = sandbox.add_media(JPEG, "image/jpeg")
    inbound(engine, twilio_account, url.format(path=path))

    await make_worker(engine, http, tmp_path, clock).run_once()

    [row] = media_rows(engine)
    assert row.state == "failed"
    assert reason in row.error
    assert recorder.requests == []  # the token went nowhere


# --- failures: for good, or retried later --------------------------------------------------


async def test_given_media_twilio_does_not_have_when_fetched_then_404_fails_for_good(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, recorder: Recorder,
) -> None:  # fmt: skip
    gone = f"/2010-04-01/Accounts/{SID}/Messages/SM{'a' * 32}/Media/ME{'b' * 32}"
    inbound(engine, twilio_account, BASE + gone)
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()
    clock.now += timedelta(days=1)
    again = await worker.run_once()

    [row] = media_rows(engine)
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.error == "Twilio media answered HTTP 404 (Twilio error 20404): no such media"
    assert (again, len(recorder.requests)) == (0, 1)


@pytest.mark.parametrize(
    ("predicate", "status", "reason"),
    [
        (is_media, 503, "Twilio media answered HTTP 503"),
        (is_media, 429, "Twilio media answered HTTP 429"),
        (is_cdn, 503, "Twilio media download answered HTTP 503"),
        (is_cdn, 403, "Twilio media download answered HTTP 403: the short-lived URL expired"),
    ],
)
async def test_given_transient_failure_then_200_when_worker_runs_then_retried_and_stored(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder,
    predicate: Callable[[httpx.Request], bool], status: int, reason: str,
) -> None:  # fmt: skip
    inbound(engine, twilio_account, hosted(sandbox))
    recorder.fail(predicate, status, 1)
    worker = make_worker(engine, http, tmp_path, clock)

    await worker.run_once()
    [pending] = media_rows(engine)
    not_yet = await worker.run_once()
    clock.now += timedelta(seconds=5)
    await worker.run_once()

    assert (pending.state, pending.attempts, pending.error) == ("pending", 1, reason)
    assert pending.next_attempt_at == T0 + timedelta(seconds=5)
    assert not_yet == 0
    [row] = media_rows(engine)
    assert (row.state, row.attempts, row.error) == ("stored", 2, None)
    assert (tmp_path / "media" / row.path).read_bytes() == JPEG


# --- waiting for an operator ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("twilio", "missing"),
    [
        (None, "WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN"),
        (TwilioMediaAccount(SID, Secret(""), BASE), "WACRM_TWILIO_AUTH_TOKEN"),
    ],
)
async def test_given_twilio_not_configured_when_worker_runs_then_pending_with_the_settings(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder, caplog: pytest.LogCaptureFixture,
    twilio: TwilioMediaAccount | None, missing: str,
) -> None:  # fmt: skip
    inbound(engine, twilio_account, hosted(sandbox))
    worker = make_worker(engine, http, tmp_path, clock, twilio=twilio)

    with caplog.at_level(logging.INFO, logger="wacrm.workers.media"):
        await worker.run_once()
        [first] = media_rows(engine)
        clock.now = first.next_attempt_at
        await worker.run_once()

    [row] = media_rows(engine)
    assert (row.state, row.attempts) == ("pending", 0)  # waits; costs no attempt
    assert row.error == f"Twilio is not configured ({missing} not set)"
    assert row.next_attempt_at - clock.now == timedelta(seconds=10)  # backs off all the same
    assert recorder.requests == []
    [logged] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"Set {missing}" in logged.getMessage()


async def test_given_auth_token_refused_when_retrying_then_waits_uncounted_and_logs_once(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    wrong = "twilio-wrong-auth-token"
    inbound(engine, twilio_account, hosted(sandbox))
    worker = make_worker(
        engine, http, tmp_path, clock, twilio=TwilioMediaAccount(SID, Secret(wrong), BASE)
    )

    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            await worker.run_once()
            [row] = media_rows(engine)
            clock.now = row.next_attempt_at

    assert (row.state, row.attempts) == ("pending", 0)
    assert row.error == (
        "Twilio media answered HTTP 401: the auth token was refused (WACRM_TWILIO_AUTH_TOKEN)"
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "WACRM_TWILIO_AUTH_TOKEN" in errors[0].getMessage()
    assert wrong not in caplog.text and wrong not in row.error


async def test_given_fetches_stored_refused_and_retried_when_logging_then_token_in_no_record(
    engine: Engine, twilio_account: int, http: httpx.AsyncClient, tmp_path: Path,
    clock: Clock, sandbox: TwilioSandbox, recorder: Recorder, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    inbound(engine, twilio_account, hosted(sandbox))
    inbound(engine, twilio_account, hosted(sandbox, PDF, "application/pdf"))
    recorder.fail(is_media, 401, 1)
    recorder.fail(is_cdn, 503, 1)
    worker = make_worker(engine, http, tmp_path, clock)

    with caplog.at_level(logging.DEBUG):
        for _ in range(4):
            await worker.run_once()
            clock.now += timedelta(minutes=1)

    assert sorted(r.state for r in media_rows(engine)) == ["stored", "stored"]
    assert caplog.records  # something was logged: the refusal at least
    for record in caplog.records:
        shown = record.getMessage() + repr(record.args) + repr(record.__dict__)
        assert AUTH not in shown and BASIC not in shown


# --- parsing: the caption ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "caption"), [("our invoice", "our invoice"), ("", None)])
def test_given_twilio_media_message_with_body_when_parsed_then_caption_is_the_body(
    body: str, caption: str | None
) -> None:
    form = {**fixture("inbound_image"), "Body": body}

    message = parse_twilio_message({"message": form, "received_at": 1})

    assert message.media is not None
    assert message.media.caption == caption
    assert message.media.id is None and message.media.url == form["MediaUrl0"]
