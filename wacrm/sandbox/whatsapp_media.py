"""The sandbox's media endpoints: upload (``POST /{phone_number_id}/media``), look-up
(``GET /{media_id}``) and download (the look-up's short-lived ``url``, Bearer required).

Size and type limits are Meta's (facts/whatsapp.md §2, Media size limits); a type that is not
allowed for its kind, or a file over its limit, is refused with 131053 as Meta does. The
download URL expires after 5 minutes, like Meta's.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from wacrm.sandbox.whatsapp_checks import GraphError
from wacrm.whatsapp.content_media import STATIC_STICKER_LIMIT, is_animated_webp

MB = 1024 * 1024
URL_TTL = 300.0  # seconds a download URL stays valid

# MIME type → (kind, byte limit)
LIMITS: dict[str, tuple[str, int]] = {
    "image/jpeg": ("image", 5 * MB),
    "image/png": ("image", 5 * MB),
    "video/mp4": ("video", 16 * MB),
    "video/3gpp": ("video", 16 * MB),
    "audio/aac": ("audio", 16 * MB),
    "audio/amr": ("audio", 16 * MB),
    "audio/mpeg": ("audio", 16 * MB),
    "audio/mp4": ("audio", 16 * MB),
    "audio/ogg": ("audio", 16 * MB),
    "application/pdf": ("document", 100 * MB),
    "application/msword": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (
        "document",
        100 * MB,
    ),
    "application/vnd.ms-excel": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ("document", 100 * MB),
    "application/vnd.ms-powerpoint": ("document", 100 * MB),
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": (
        "document",
        100 * MB,
    ),
    "text/plain": ("document", 100 * MB),
    "image/webp": ("sticker", 500 * 1024),  # animated; a static sticker is ≤ 100 KB
}
MAX_UPLOAD = 100 * MB


def media_error(details: str) -> GraphError:
    return GraphError(400, 131053, "Media upload error", details=details)


@dataclass(frozen=True, slots=True)
class Media:
    id: str
    data: bytes
    mime_type: str
    sha256: str
    filename: str | None
    uploaded_at: float


def parse_form(body: bytes, content_type: str) -> dict[str, tuple[bytes, str | None, str | None]]:
    """``multipart/form-data`` → field name → (bytes, filename, content type)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise GraphError(400, 100, "Invalid parameter", details="Send multipart/form-data.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, tuple[bytes, str | None, str | None]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        fields[name] = (data, part.get_filename(), part.get_content_type())
    return fields


class MediaStore:
    """Uploaded media of one sandbox, in memory."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._media: dict[str, Media] = {}
        self._urls: dict[str, tuple[str, float]] = {}  # url token → (media id, expires)

    def upload(self, body: bytes, content_type: str) -> Media:
        if len(body) > MAX_UPLOAD + 64 * 1024:
            raise media_error("The file is larger than 100 MB.")
        fields = parse_form(body, content_type)
        product = fields.get("messaging_product", (b"", None, None))[0].decode(errors="replace")
        if product != "whatsapp":
            raise GraphError(400, 100, "The parameter messaging_product is required.")
        if "file" not in fields:
            raise GraphError(
                400,
                131008,
                "Required parameter is missing",
                details="The parameter file is required.",
            )
        data, filename, part_type = fields["file"]
        declared = fields.get("type", (b"", None, None))[0].decode(errors="replace") or part_type
        mime = (declared or "").split(";")[0].strip().lower()
        if mime not in LIMITS:
            raise media_error(f"Unsupported media type {mime or 'unknown'!r}.")
        kind, limit = LIMITS[mime]
        if kind == "sticker" and not is_animated_webp(data[:32]):
            limit = STATIC_STICKER_LIMIT  # Meta: 100 KB static, 500 KB animated
        if len(data) > limit:
            raise media_error(f"The {kind} is {len(data)} bytes; the limit is {limit}.")
        media = Media(
            id=str(10**15 + secrets.randbelow(9 * 10**15)),
            data=data,
            mime_type=mime,
            sha256=hashlib.sha256(data).hexdigest(),
            filename=filename,
            uploaded_at=self._clock(),
        )
        self._media[media.id] = media
        return media

    def get(self, media_id: str) -> Media | None:
        return self._media.get(media_id)

    def url_for(self, media: Media, base_url: str) -> str:
        token = secrets.token_urlsafe(16)
        self._urls[token] = (media.id, self._clock() + URL_TTL)
        return f"{base_url.rstrip('/')}/_sandbox/media/{token}"

    def download(self, token: str) -> Media | None:
        """The media behind a download URL, or None if unknown or expired (Meta: 404)."""
        found = self._urls.get(token)
        if found is None or self._clock() >= found[1]:
            return None
        return self._media.get(found[0])
