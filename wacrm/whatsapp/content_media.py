"""What media WhatsApp accepts: MIME types and byte limits per message type.

From Meta's "supported media types" (facts/whatsapp.md §2, re-checked against the Cloud API
media reference and its mirrors): image JPEG/PNG ≤ 5 MB; video MP4/3GPP ≤ 16 MB; audio
AAC/AMR/MP3/M4A/OGG-Opus ≤ 16 MB; document PDF, (Open)Office, text ≤ 100 MB; sticker WebP
≤ 100 KB static, ≤ 500 KB animated. MB here is 1024 × 1024 bytes, as in the sandbox.
A MIME type that does not fit the message type fails at Meta with 131053.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

KB = 1024
MB = 1024 * KB

MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")

MEDIA_LIMIT: Mapping[str, int] = MappingProxyType(
    {
        "image": 5 * MB,
        "video": 16 * MB,
        "audio": 16 * MB,
        "document": 100 * MB,
        "sticker": 500 * KB,  # animated; a static sticker is at most STATIC_STICKER_LIMIT
    }
)
STATIC_STICKER_LIMIT = 100 * KB

_DOCUMENTS = frozenset(
    {
        "text/plain",
        "application/pdf",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)
MEDIA_MIME: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "image": frozenset({"image/jpeg", "image/png"}),
        # Meta's table says video/3gp; the registered type is video/3gpp. Both are seen.
        "video": frozenset({"video/mp4", "video/3gpp", "video/3gp"}),
        # OGG only with the Opus codec; the type alone cannot tell.
        "audio": frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}),
        "document": _DOCUMENTS,
        "sticker": frozenset({"image/webp"}),
    }
)

_EXTENSION_MIME: Mapping[str, str] = MappingProxyType(
    {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".gif": "image/gif",
        ".heic": "image/heic",
        ".webp": "image/webp",
        ".mp4": "video/mp4",
        ".3gp": "video/3gpp",
        ".mov": "video/quicktime",
        ".aac": "audio/aac",
        ".amr": "audio/amr",
        ".mp3": "audio/mpeg",
        ".m4a": "audio/mp4",
        ".ogg": "audio/ogg",
        ".opus": "audio/ogg",
        ".wav": "audio/wav",
        ".txt": "text/plain",
        ".pdf": "application/pdf",
        ".doc": "application/msword",
        ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ".xls": "application/vnd.ms-excel",
        ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        ".ppt": "application/vnd.ms-powerpoint",
        ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)


def bare_mime(mime: str) -> str:
    """``audio/ogg; codecs=opus`` → ``audio/ogg``."""
    return mime.split(";", 1)[0].strip().lower()


def mime_for(name: str) -> str | None:
    """The MIME type a file name's extension stands for; None for one we don't know."""
    return _EXTENSION_MIME.get(Path(name).suffix.lower())


def human_size(size: int) -> str:
    if size >= MB:
        return f"{size / MB:.1f} MB"
    if size >= KB:
        return f"{size / KB:.0f} KB"
    return f"{size} bytes"


def is_animated_webp(head: bytes) -> bool:
    """True for a WebP file whose extended header (VP8X) has the animation flag set."""
    return (
        len(head) >= 21
        and head[:4] == b"RIFF"
        and head[8:12] == b"WEBP"
        and head[12:16] == b"VP8X"
        and bool(head[20] & 0x02)
    )
