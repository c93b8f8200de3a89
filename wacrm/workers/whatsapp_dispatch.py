"""Which provider sends an outbox row, and the request it sends.

A row's provider is its number's (``whatsapp_numbers.provider``, read with the claim). Every
row stores a Cloud-API-shaped body; :meth:`Senders.prepare` turns it into the call for that
provider *before* the row is paced (a body that can never go costs no token), and the call
it returns performs the send and gives back the provider's message id (Meta's wamid, Twilio's
``SM…`` sid), raising :class:`~wacrm.whatsapp.meta_send.SendError` (Twilio's
:class:`~wacrm.whatsapp.twilio_send.TwilioSendError` is one) on failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from wacrm.config import Settings
from wacrm.whatsapp.meta_send import CloudApiClient
from wacrm.whatsapp.twilio_bodies import ContentSids, parse_content_sids, twilio_request
from wacrm.whatsapp.twilio_errors import CREDENTIALS_HINT as TWILIO_CREDENTIALS_HINT
from wacrm.whatsapp.twilio_errors import THROTTLE_CODES as TWILIO_THROTTLE_CODES
from wacrm.whatsapp.twilio_send import TwilioSender
from wacrm.workers.whatsapp_queue import Job

META, TWILIO = "meta", "twilio"
PROVIDERS = frozenset({META, TWILIO})
TWILIO_WEBHOOK_PATH = "/webhooks/twilio"  # where the server takes Twilio's status callbacks

# Per provider: the codes that mean "this number is over its rate" (pause the whole number),
# what to set when the credentials are rejected, and the local refusal outside the 24 h
# window (the code the provider itself would answer).
# Rate-limit codes and who waits out the backoff (facts/whatsapp.md, errors): the number
# that drew it (Meta 130429, Twilio's sender limits), every number of the account (Meta
# 80007, the WhatsApp Business Account's limit), or every number of the provider (Meta 4,
# the app's API-call rate).
ThrottleScope = Literal["number", "account", "app"]
THROTTLE_SCOPES: Mapping[str, Mapping[int, ThrottleScope]] = {
    META: {130429: "number", 80007: "account", 4: "app"},
    TWILIO: dict.fromkeys(TWILIO_THROTTLE_CODES, "number"),
}
CREDENTIALS_HINTS = {
    META: "set a valid WACRM_WHATSAPP_ACCESS_TOKEN",
    TWILIO: TWILIO_CREDENTIALS_HINT,
}
WINDOW_CLOSED = {
    META: (131047, "Re-engagement message"),
    TWILIO: (63016, "Outside messaging window"),
}
SETTINGS_FOR = {
    META: "WACRM_WHATSAPP_ACCESS_TOKEN",
    TWILIO: "WACRM_TWILIO_ACCOUNT_SID and WACRM_TWILIO_AUTH_TOKEN",
}


class NoSender(Exception):
    """The row's provider is not configured here: its number is halted (an ops alert)."""


SendCall = Callable[[], str]  # sends; returns the provider message id


class Senders:
    """The configured senders, one per provider; ``None`` where a provider is not set up."""

    def __init__(
        self,
        meta: CloudApiClient | None,
        twilio: TwilioSender | None = None,
        *,
        content_sids: ContentSids | None = None,
        twilio_status_callback: str | None = None,
    ) -> None:
        self.meta = meta
        self.twilio = twilio
        self._content_sids: ContentSids = content_sids or {}
        self._status_callback = twilio_status_callback

    @classmethod
    def from_settings(
        cls, settings: Settings, meta: CloudApiClient | None, twilio: TwilioSender | None
    ) -> Senders:
        """Content SIDs from ``WACRM_TWILIO_CONTENT_SIDS`` (a malformed one is a
        :class:`~wacrm.config.ConfigError`); status callbacks to ``WACRM_PUBLIC_URL`` +
        ``/webhooks/twilio`` when it is set (else the sender's own callback in Twilio's
        console applies)."""
        callback = (
            settings.public_url.rstrip("/") + TWILIO_WEBHOOK_PATH if settings.public_url else None
        )
        return cls(
            meta,
            twilio,
            content_sids=parse_content_sids(settings.twilio_content_sids),
            twilio_status_callback=callback,
        )

    def prepare(self, job: Job, body: dict[str, Any]) -> SendCall:
        """The send for ``body`` from ``job``'s number. Raises
        :class:`~wacrm.whatsapp.twilio_bodies.NotSendable` for a body the provider cannot
        take, and :class:`NoSender` if the provider is not configured."""
        if job.provider == TWILIO:
            if self.twilio is None:
                raise NoSender(f"it is a Twilio number and {SETTINGS_FOR[TWILIO]} are unset")
            request = twilio_request(body, self._content_sids)
            twilio = self.twilio

            def send_twilio() -> str:
                return twilio.send(
                    from_=job.phone_number_id,
                    to=request.to,
                    body=request.body,
                    media_url=request.media_url,
                    content_sid=request.content_sid,
                    content_variables=request.content_variables,
                    status_callback=self._status_callback,
                ).sid

            return send_twilio
        if job.provider != META:
            raise NoSender(f"its provider {job.provider!r} has no sender in wacrm")
        if self.meta is None:
            raise NoSender(f"it is a Cloud API number and {SETTINGS_FOR[META]} is unset")
        meta = self.meta
        # Echoed back in status webhooks: a status can be correlated even if it races the
        # commit that records the wamid.
        tagged = {**body, "biz_opaque_callback_data": str(job.id)}
        return lambda: meta.send(job.phone_number_id, tagged).provider_message_id
