"""JSON parsed with where each value starts, so a finding about a field can point at its line.

:func:`loads` is :func:`json.loads` whose strings, objects and arrays remember the offset of
their first character; :func:`position` finds the offset of a field path such as
``interactive.action.buttons[3].reply.title`` (0-based indexes), or of its nearest parent.
It runs the standard library's pure-Python scanner with three parse hooks wrapped.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable
from typing import Any

_PATH = re.compile(r"[^.\[\]]+|\[(\d+)\]")


class _Str(str):
    pos: int


class _Dict(dict[str, Any]):
    pos: int


class _List(list[Any]):
    pos: int


_json_object: Callable[..., tuple[dict[str, Any], int]] = json.decoder.JSONObject  # type: ignore[attr-defined]
_json_array: Callable[..., tuple[list[Any], int]] = json.decoder.JSONArray  # type: ignore[attr-defined]
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_make_scanner: Callable[[Any], Any] = json.scanner.py_make_scanner  # type: ignore[attr-defined]


def _parse_string(s: str, end: int, strict: bool) -> tuple[_Str, int]:
    value, after = _scanstring(s, end, strict)
    out = _Str(value)
    out.pos = end - 1
    return out, after


def _parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_Dict, int]:
    value, after = _json_object(s_and_end, *args)
    out = _Dict(value)
    out.pos = s_and_end[1] - 1
    return out, after


def _parse_array(s_and_end: tuple[str, int], *args: Any) -> tuple[_List, int]:
    value, after = _json_array(s_and_end, *args)
    out = _List(value)
    out.pos = s_and_end[1] - 1
    return out, after


class _Decoder(json.JSONDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.parse_string = _parse_string
        self.parse_object = _parse_object
        self.parse_array = _parse_array
        self.scan_once = _make_scanner(self)


def loads(text: str) -> Any:
    """Like :func:`json.loads` (raises :class:`json.JSONDecodeError`), with positions."""
    return _Decoder().decode(text)


def position(root: Any, path: str) -> int:
    """Offset of the value at ``path`` under ``root``, or of its nearest located parent."""
    best = getattr(root, "pos", 0)
    node = root
    for m in _PATH.finditer(path):
        index, key = m.group(1), m.group(0)
        if index is not None and isinstance(node, list) and int(index) < len(node):
            node = node[int(index)]
        elif index is None and isinstance(node, dict) and key in node:
            node = node[key]
        else:
            break
        best = getattr(node, "pos", best)
    return int(best)
