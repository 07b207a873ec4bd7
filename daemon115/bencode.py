"""Bencode, decoded strictly enough to trust on files dropped by anyone.

Torrent files come from users and from websites that sometimes answer with an error page, so the decoder must
never crash with anything but :class:`BencodeError` (which says what is wrong and at which byte), must stay
bounded in depth and memory, and must be able to say exactly which bytes a top-level value occupied: the info
hash is the SHA-1 of the ``info`` bytes *as they appear in the file*, and re-encoding a dictionary whose keys are
out of order gives a different, wrong hash.

Non-canonical integers (``i03e``, ``i-0e``, ``ie``) and string lengths (``04:spam``) are rejected, as are
duplicate dictionary keys, because each makes two readers disagree about one file. Keys out of sorted order are
tolerated: real torrents have them and their raw bytes are hashed, never re-encoded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

BValue = int | bytes | list["BValue"] | dict[bytes, "BValue"]

MAX_DEPTH = 64
MAX_INT_DIGITS = 64  # far beyond any size or date a torrent holds; keeps int() away from huge digit strings

_INT_RE = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_LENGTH_RE = re.compile(rb"0|[1-9][0-9]*")


class BencodeError(ValueError):
    """Input that is not valid bencode; ``offset`` is the byte where decoding stopped."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


@dataclass(frozen=True)
class SpannedDict:
    """A top-level dictionary, where each of its values sits in the input, and where the dictionary ends."""

    value: dict[bytes, BValue]
    spans: Mapping[bytes, tuple[int, int]]
    end: int


def bdecode(data: bytes, *, max_depth: int = MAX_DEPTH) -> BValue:
    """Decode exactly one value that fills ``data``; trailing bytes are an error."""
    value, end = bdecode_prefix(data, max_depth=max_depth)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} trailing byte(s) after the value", end)
    return value


def bdecode_prefix(data: bytes, *, start: int = 0, max_depth: int = MAX_DEPTH) -> tuple[BValue, int]:
    """Decode one value at ``start``; return it and the offset just past it (what follows is the caller's call)."""
    data = bytes(data)
    return _Decoder(data, max_depth).value(start, 0)


def bdecode_dict_spans(data: bytes, *, max_depth: int = MAX_DEPTH) -> SpannedDict:
    """Decode a top-level dictionary at offset 0 and report the (start, end) byte span of each of its values."""
    data = bytes(data)
    if not data.startswith(b"d"):
        raise BencodeError("expected a dictionary ('d')" if data else "empty input", 0)
    spans: dict[bytes, tuple[int, int]] = {}
    value, end = _Decoder(data, max_depth).dictionary(0, 0, spans)
    return SpannedDict(value=value, spans=spans, end=end)


class _Decoder:
    """Recursive descent bounded by ``max_depth``; every read is checked against the end of the input."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.max_depth = max_depth

    def value(self, pos: int, depth: int) -> tuple[BValue, int]:
        data = self.data
        if pos >= len(data):
            raise BencodeError("unexpected end of input", pos)
        lead = data[pos]
        if lead == 0x69:  # i
            return self.integer(pos)
        if 0x30 <= lead <= 0x39:
            return self.string(pos)
        if lead == 0x6C:  # l
            return self.list(pos, depth + 1)
        if lead == 0x64:  # d
            return self.dictionary(pos, depth + 1, None)
        raise BencodeError(f"unexpected byte {bytes([lead])!r}", pos)

    def integer(self, pos: int) -> tuple[int, int]:
        end = self.data.find(b"e", pos + 1, pos + 3 + MAX_INT_DIGITS)
        if end < 0:
            if self.data.find(b"e", pos + 1) < 0:
                raise BencodeError("unterminated integer", pos)
            raise BencodeError(f"integer longer than {MAX_INT_DIGITS} digits", pos)
        digits = self.data[pos + 1 : end]
        if not _INT_RE.fullmatch(digits) or digits == b"-0":
            raise BencodeError(f"malformed integer {digits[:20]!r}", pos)
        return int(digits), end + 1

    def string(self, pos: int) -> tuple[bytes, int]:
        data = self.data
        max_digits = len(str(len(data)))
        colon = pos
        limit = min(len(data), pos + max_digits + 1)
        while colon < limit and 0x30 <= data[colon] <= 0x39:
            colon += 1
        digits = data[pos:colon]
        if colon >= len(data) or data[colon] != 0x3A:  # ':'
            if len(digits) > max_digits:
                raise BencodeError("string length is longer than the input", pos)
            raise BencodeError("string length is not followed by ':'", pos)
        if not _LENGTH_RE.fullmatch(digits):
            raise BencodeError(f"malformed string length {digits!r}", pos)
        start = colon + 1
        end = start + int(digits)
        if end > len(data):
            raise BencodeError(f"string of {int(digits)} bytes runs past the end of the input", pos)
        return data[start:end], end

    def list(self, pos: int, depth: int) -> tuple[list[BValue], int]:
        self.check_depth(pos, depth)
        items: list[BValue] = []
        pos += 1
        while True:
            if pos >= len(self.data):
                raise BencodeError("unterminated list", pos)
            if self.data[pos] == 0x65:  # e
                return items, pos + 1
            item, pos = self.value(pos, depth)
            items.append(item)

    def dictionary(
        self, pos: int, depth: int, spans: dict[bytes, tuple[int, int]] | None
    ) -> tuple[dict[bytes, BValue], int]:
        self.check_depth(pos, depth)
        result: dict[bytes, BValue] = {}
        pos += 1
        while True:
            if pos >= len(self.data):
                raise BencodeError("unterminated dictionary", pos)
            lead = self.data[pos]
            if lead == 0x65:  # e
                return result, pos + 1
            if not 0x30 <= lead <= 0x39:
                raise BencodeError("dictionary key is not a byte string", pos)
            key_pos = pos
            key, pos = self.string(pos)
            if key in result:
                raise BencodeError(f"duplicate dictionary key {key[:40]!r}", key_pos)
            if pos < len(self.data) and self.data[pos] == 0x65:  # e
                raise BencodeError(f"dictionary key {key[:40]!r} has no value", pos)
            start = pos
            result[key], pos = self.value(pos, depth)
            if spans is not None:
                spans[key] = (start, pos)

    def check_depth(self, pos: int, depth: int) -> None:
        if depth > self.max_depth:
            raise BencodeError(f"nested deeper than {self.max_depth} levels", pos)


def bencode(value: object) -> bytes:
    """Canonical encoding (keys sorted by their bytes); ``str`` is written as UTF-8."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: object, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans; use 0 or 1")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview, str)):
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        out.append(b"%d:%s" % (len(raw), raw))
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, Mapping):
        _encode_dict(value, out)
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def _encode_dict(value: Mapping[object, object], out: list[bytes]) -> None:
    items: dict[bytes, object] = {}
    for key, item in value.items():
        if isinstance(key, str):
            raw = key.encode("utf-8")
        elif isinstance(key, (bytes, bytearray)):
            raw = bytes(key)
        else:
            raise TypeError(f"bencode dictionary keys must be bytes or str, not {type(key).__name__}")
        if raw in items:
            raise ValueError(f"duplicate dictionary key {raw!r}")
        items[raw] = item
    out.append(b"d")
    for raw in sorted(items):
        out.append(b"%d:%s" % (len(raw), raw))
        _encode(items[raw], out)
    out.append(b"e")
