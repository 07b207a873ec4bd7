"""Outside text (magnet, ed2k, http(s), ftp lines and .torrent bytes) turned into normalized links.

Pure functions: callers read the files. Every link gets one canonical ``url`` (what is sent to 115) and a ledger
``key``, so the same download arriving as a hex magnet, a base32 magnet, or a .torrent is recognised as one.

Decisions (each is pinned by a test):

- Magnets keep only ``xt`` (btih/btmh), ``dn``, ``tr`` and ``xl`` in their canonical form; other parameters (ws, as,
  xs, x.pe, dht, so, kt) are hints 115 does not use and that differ between copies of one magnet. Other ``xt`` URNs
  (ed2k, tiger tree, sha1, ...) are ignored; a magnet with no btih or btmh is rejected.
- Any malformed btih/btmh rejects the whole magnet, as do two different btih (or btmh) values: guessing which one
  the user meant would record the wrong key.
- ``xt`` must be correctly percent-escaped (a bad escape is an error); ``dn`` and ``tr`` are decoded leniently (a
  stray ``%`` stays literal) because they are only descriptive. ``+`` means a space in ``dn`` only: a tracker URL
  can hold a literal ``+``.
- ``xl`` that is not a non-negative decimal number is ignored rather than rejected: it is advisory.
- Trackers are kept only if they are http(s)/udp/ws(s) URLs without whitespace; others are dropped, duplicates
  removed, order kept.
- :func:`parse_magnet` is strict about the string it is given (a trailing newline is inside the hash and makes it
  invalid); :func:`parse_link` is the entry point for lines of text and strips surrounding whitespace first.
- ed2k links are rebuilt as ``ed2k://|file|NAME|SIZE|MD4|[h=AICH|]/``: the name segment exactly as given, the MD4
  and AICH hashes upper-cased (the form eMule writes); part hashes, ``s=`` sources and ``|sources,...|`` blocks
  are dropped, since 115 fetches from the network itself and they vary between copies of one link.
- http/https/ftp URLs: scheme and host lower-cased, default port dropped, fragment dropped, a space written as
  ``%20``, path and query otherwise kept byte for byte. Control characters reject the link (links are sent to
  115 joined by newlines, so one must never contain one).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from daemon115.bencode import BencodeError, BValue, SpannedDict, bdecode_dict_spans

MAX_TORRENT_SIZE = 10 * 1024 * 1024

_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_BASE32_32 = re.compile(r"[A-Za-z2-7]{32}")
_BTMH = re.compile(r"1220[0-9a-fA-F]{64}")
_MD4 = re.compile(r"[0-9a-fA-F]{32}")
_AICH = re.compile(r"[A-Za-z2-7]{32}")
_PART_HASHES = re.compile(r"[0-9a-fA-F]{32}(?::[0-9a-fA-F]{32})*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_INDEXED_KEY = re.compile(r"(xt|tr)(?:\.\d+)?")
# the host's first character, then anything printable: one way to split, so a failing fullmatch stays linear
_TRACKER = re.compile(r"(?:https?|udp|wss?)://[^\s\x00-\x1f\x7f/?#<>\"\\][^\s\x00-\x1f\x7f<>\"]*", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21}
_WHITESPACE = b" \t\r\n"


class LinkError(ValueError):
    """A link or torrent that cannot be used; ``reason`` (also ``str()``) says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Link:
    """A link in the one spelling daemon115 submits and records, with what it says about the download."""

    kind: str  # "magnet" | "ed2k" | "http" (http and https) | "ftp"
    url: str  # the normalized link submitted to 115
    info_hash: str | None  # BitTorrent v1 btih, 40 lowercase hex
    btmh: str | None  # BitTorrent v2 multihash, "1220" + 64 lowercase hex
    name: str | None
    size: int | None
    trackers: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The ledger key: one download has one key, whichever form of link brought it."""
        if self.info_hash:
            return self.info_hash
        if self.btmh:
            return "btmh:" + self.btmh
        return self.url


@dataclass(frozen=True)
class Torrent:
    """What a .torrent file says that 115 needs: 115 takes links, not files, so a torrent becomes a magnet."""

    info_hash: str | None  # SHA-1 of the info bytes as they are in the file; None for v2-only
    info_hash_v2: str | None  # SHA-256 of the same bytes, for v2 and hybrid torrents
    version: str  # "v1" | "v2" | "hybrid"
    name: str | None
    trackers: tuple[str, ...]
    total_size: int | None
    private: bool

    def to_link(self) -> Link:
        return make_magnet(
            info_hash=self.info_hash,
            btmh="1220" + self.info_hash_v2 if self.info_hash_v2 else None,
            name=self.name,
            trackers=self.trackers,
            size=self.total_size,
        )


# ---------------------------------------------------------------- dispatch


def parse_link(text: str) -> Link:
    """One line of outside text -> a Link; surrounding whitespace (and a BOM) is not part of the link."""
    text = text.strip().lstrip("\ufeff").strip()
    if not text:
        raise LinkError("empty link")
    scheme, sep, _ = text.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise LinkError(f"not a link: {_show(text)} (expected magnet:?, ed2k://, http(s):// or ftp://)")
    lowered = scheme.lower()
    if lowered == "magnet":
        return parse_magnet(text)
    if lowered == "ed2k":
        return parse_ed2k(text)
    if lowered in ("http", "https", "ftp"):
        kind = "ftp" if lowered == "ftp" else "http"
        return Link(kind=kind, url=normalize_url(text), info_hash=None, btmh=None, name=None, size=None)
    raise LinkError(f"unsupported scheme {_show(scheme, 20)} (expected magnet, ed2k, http, https or ftp)")


# ---------------------------------------------------------------- hashes


def btih_to_hex(value: str) -> str:
    """A btih as 40 hex or 32 base32 characters (any case) -> 40 lowercase hex."""
    if _HEX40.fullmatch(value):
        return value.lower()
    if _BASE32_32.fullmatch(value):
        return base64.b32decode(value.upper()).hex()
    raise LinkError(f"btih {_show(value)} is neither 40 hex nor 32 base32 characters")


def is_info_hash(value: str) -> bool:
    """Whether ``value`` is a btih in either accepted spelling (40 hex or 32 base32, any case)."""
    return bool(_HEX40.fullmatch(value) or _BASE32_32.fullmatch(value))


def _btmh_to_hex(value: str) -> str:
    if _BTMH.fullmatch(value):
        return value.lower()
    raise LinkError(f"btmh {_show(value)} is not a sha2-256 multihash ('1220' followed by 64 hex characters)")


# ---------------------------------------------------------------- magnets


def make_magnet(
    *,
    info_hash: str | None = None,
    btmh: str | None = None,
    name: str | None = None,
    trackers: Iterable[str] = (),
    size: int | None = None,
) -> Link:
    """Build the canonical magnet Link; :func:`parse_magnet` of its ``url`` gives the same Link back."""
    info_hash = btih_to_hex(info_hash) if info_hash else None
    btmh = _btmh_to_hex(btmh) if btmh else None
    if not info_hash and not btmh:
        raise LinkError("magnet has no xt=urn:btih or urn:btmh")
    name = name.encode("utf-8", "replace").decode("utf-8") if name else None
    kept = _clean_trackers(trackers)
    if size is not None and size < 0:
        size = None
    parts = []
    if info_hash:
        parts.append("xt=urn:btih:" + info_hash)
    if btmh:
        parts.append("xt=urn:btmh:" + btmh)
    if name:
        parts.append("dn=" + quote(name, safe=""))
    parts.extend("tr=" + quote(tracker, safe="") for tracker in kept)
    if size is not None:
        parts.append(f"xl={size}")
    return Link(kind="magnet", url="magnet:?" + "&".join(parts), info_hash=info_hash, btmh=btmh, name=name,
                size=size, trackers=kept)


def parse_magnet(uri: str) -> Link:
    """A magnet URI exactly as given (no stripping) -> its canonical Link."""
    scheme, _, rest = uri.partition(":")
    if scheme.lower() != "magnet":
        raise LinkError(f"not a magnet link: {_show(uri)}")
    if not rest.startswith("?"):
        raise LinkError("magnet has no xt=urn:btih or urn:btmh (nothing after 'magnet:')")
    btih: list[str] = []
    btmh: list[str] = []
    other_urns: list[str] = []
    names: list[str] = []
    trackers: list[str] = []
    sizes: list[int] = []
    for key, value in _magnet_params(rest[1:]):
        if key == "xt":
            _read_xt(value, btih, btmh, other_urns)
        elif key == "dn":
            names.append(unquote(value.replace("+", " "), errors="replace"))
        elif key == "tr":
            trackers.append(unquote(value, errors="replace").strip())
        elif key == "xl" and _is_decimal(value):
            sizes.append(int(value))
    if not btih and not btmh:
        found = f" (found only {', '.join(dict.fromkeys(other_urns))})" if other_urns else ""
        raise LinkError(f"magnet has no xt=urn:btih or urn:btmh{found}")
    return make_magnet(
        info_hash=_only(btih, "btih"),
        btmh=_only(btmh, "btmh"),
        name=next((n for n in names if n), None),
        trackers=trackers,
        size=sizes[0] if sizes else None,
    )


def _magnet_params(query: str) -> Iterable[tuple[str, str]]:
    """(lower-cased key, raw value) pairs; ``xt.1``/``tr.2`` indexed forms fold into ``xt``/``tr``."""
    for param in query.split("&"):
        key, sep, value = param.partition("=")
        if not sep:
            continue
        key = key.lower()
        indexed = _INDEXED_KEY.fullmatch(key)
        yield (indexed.group(1) if indexed else key), value


def _read_xt(value: str, btih: list[str], btmh: list[str], other_urns: list[str]) -> None:
    bad = _BAD_ESCAPE.search(value)
    if bad:
        raise LinkError(f"magnet xt has an invalid percent-escape at character {bad.start()}: {_show(value)}")
    urn = unquote(value, errors="replace")
    lowered = urn.lower()
    if lowered.startswith("urn:btih:"):
        btih.append(btih_to_hex(urn[9:]))
    elif lowered.startswith("urn:btmh:"):
        btmh.append(_btmh_to_hex(urn[9:]))
    else:
        other_urns.append(":".join(urn.split(":")[:2])[:40] if lowered.startswith("urn:") else "non-URN xt")


def _only(values: list[str], what: str) -> str | None:
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        raise LinkError(f"magnet has {len(distinct)} different {what} values: {', '.join(distinct)}")
    return distinct[0] if distinct else None


def _clean_trackers(trackers: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for t in (t.strip() for t in trackers) if _TRACKER.fullmatch(t)))


# ---------------------------------------------------------------- ed2k


def parse_ed2k(uri: str) -> Link:
    """``ed2k://|file|NAME|SIZE|MD4|`` plus optional ``h=``/``p=``/``s=`` fields, ``/`` and ``|sources,...|/``."""
    if uri[:7].lower() != "ed2k://":
        raise LinkError(f"not an ed2k link: {_show(uri)}")
    if _CONTROL.search(uri):
        raise LinkError("ed2k link contains control characters")
    fields = uri[7:].split("|")
    if fields[0] != "" or len(fields) < 2:
        raise LinkError(f"ed2k link must start 'ed2k://|': {_show(uri)}")
    if fields[1].lower() != "file":
        raise LinkError(f"ed2k link is a {_show(fields[1])} link, not a file link")
    if len(fields) < 6:
        raise LinkError("ed2k file link needs |file|NAME|SIZE|HASH|")
    name_raw, size_raw, md4 = fields[2], fields[3], fields[4]
    if not name_raw.strip():
        raise LinkError("ed2k link has an empty file name")
    if not _is_decimal(size_raw) or int(size_raw) == 0:
        raise LinkError(f"ed2k size {_show(size_raw)} is not a positive number")
    if not _MD4.fullmatch(md4):
        raise LinkError(f"ed2k hash {_show(md4)} is not 32 hex characters")
    aich = _ed2k_tail(fields[5:])
    size = int(size_raw)
    url = f"ed2k://|file|{name_raw}|{size}|{md4.upper()}|" + (f"h={aich}|" if aich else "") + "/"
    return Link(kind="ed2k", url=url, info_hash=None, btmh=None, name=unquote(name_raw, errors="replace"),
                size=size)


def _ed2k_tail(fields: list[str]) -> str | None:
    """Check what follows the hash; return the AICH root hash (upper-case) if there is one."""
    aich = None
    closed = False
    for position, field in enumerate(fields):
        last = position == len(fields) - 1
        if field == "/":
            closed = True
        elif field == "" and last:
            pass
        elif not closed and len(field) > 2 and field[1] == "=":
            aich = _ed2k_extra(field, aich)
        elif closed and field.lower().startswith("sources,"):
            closed = False  # a sources block is itself followed by "|/"
        else:
            raise LinkError(f"ed2k link has an unexpected field {_show(field)}")
    return aich


def _ed2k_extra(field: str, aich: str | None) -> str | None:
    tag, value = field[0].lower(), field[2:]
    if tag == "h":
        if not _AICH.fullmatch(value):
            raise LinkError(f"ed2k AICH hash {_show(value)} is not 32 base32 characters")
        return value.upper()
    if tag == "p" and not _PART_HASHES.fullmatch(value):
        raise LinkError(f"ed2k part hashes {_show(value)} are not ':'-separated 32-hex hashes")
    return aich


# ---------------------------------------------------------------- http / ftp


def normalize_url(url: str) -> str:
    """http/https/ftp URL -> the one spelling the ledger keys on (see the module notes for what changes)."""
    if _CONTROL.search(url):
        raise LinkError("link contains control characters (tab, newline, ...)")
    url = url.replace(" ", "%20")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise LinkError(f"malformed URL {_show(url)}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise LinkError(f"unsupported scheme {parts.scheme!r} (expected http, https or ftp)")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, port = _split_host_port(hostport, scheme)
    netloc = f"{userinfo}{at}{host.lower()}" + (f":{port}" if port is not None else "")
    return f"{scheme}://{netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _split_host_port(hostport: str, scheme: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise LinkError(f"{scheme} link has an unclosed IPv6 address: {_show(hostport)}")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        if rest and not rest.startswith(":"):
            raise LinkError(f"{scheme} link has junk after its IPv6 address: {_show(hostport)}")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not host or host == "[]":
        raise LinkError(f"{scheme} link has no host")
    if not port_text:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise LinkError(f"{scheme} link has an invalid port {_show(port_text)}")
    port = int(port_text)
    return host, None if port == _DEFAULT_PORTS[scheme] else port


# ---------------------------------------------------------------- torrents


def parse_torrent(data: bytes, *, max_size: int = MAX_TORRENT_SIZE) -> Torrent:
    """.torrent bytes -> Torrent; the v1/v2 hashes are over the info bytes exactly as they are in the file."""
    data = bytes(data)
    if len(data) > max_size:
        raise LinkError(f"torrent file is {len(data)} bytes, over the {max_size}-byte limit")
    top = _decode_torrent(data)
    info = top.value.get(b"info")
    if not isinstance(info, dict):
        raise LinkError("torrent has no info dictionary")
    start, end = top.spans[b"info"]
    raw_info = data[start:end]
    if not isinstance(info.get(b"name"), bytes):
        raise LinkError("corrupt torrent: info has no name")
    version = _torrent_version(info)
    return Torrent(
        info_hash=hashlib.sha1(raw_info).hexdigest() if version != "v2" else None,
        info_hash_v2=hashlib.sha256(raw_info).hexdigest() if version != "v1" else None,
        version=version,
        name=_torrent_name(info),
        trackers=_torrent_trackers(top.value),
        total_size=_torrent_size(info, version),
        private=info.get(b"private") == 1,
    )


def _decode_torrent(data: bytes) -> SpannedDict:
    if not data.strip(_WHITESPACE):
        raise LinkError("torrent file is empty")
    if data.lstrip(_WHITESPACE)[:1] in (b"{", b"[", b"<"):
        raise LinkError(
            f"not a torrent file: it looks like JSON or HTML (a web page saved as .torrent?), starts {data[:32]!r}"
        )
    try:
        top = bdecode_dict_spans(data)
    except BencodeError as exc:
        raise LinkError(f"not a torrent file (bad bencode): {exc}") from exc
    if data[top.end :].strip(_WHITESPACE):
        raise LinkError(f"not a torrent file: {len(data) - top.end} unexpected byte(s) after offset {top.end}")
    return top


def _torrent_version(info: Mapping[bytes, BValue]) -> str:
    meta_version = info.get(b"meta version", 1)
    if meta_version not in (1, 2):
        raise LinkError(f"torrent has an unsupported meta version {meta_version!r}")
    has_pieces = b"pieces" in info
    if has_pieces:
        pieces = info[b"pieces"]
        if not isinstance(pieces, bytes) or not pieces or len(pieces) % 20:
            raise LinkError("corrupt torrent: info pieces is not a non-empty multiple of 20 bytes")
    if meta_version == 2:
        if not isinstance(info.get(b"file tree"), dict):
            raise LinkError("corrupt torrent: meta version 2 without a file tree")
        return "hybrid" if has_pieces else "v2"
    if not has_pieces:
        raise LinkError("corrupt torrent: info has no pieces")
    return "v1"


def _torrent_name(info: Mapping[bytes, BValue]) -> str | None:
    raw = info.get(b"name.utf-8")
    if not isinstance(raw, bytes) or not raw:
        raw = info.get(b"name")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) and raw else None


def _torrent_trackers(top: Mapping[bytes, BValue]) -> tuple[str, ...]:
    found: list[BValue | None] = [top.get(b"announce")]
    tiers = top.get(b"announce-list")
    if isinstance(tiers, list):
        for tier in tiers:
            found.extend(tier if isinstance(tier, list) else [tier])
    return _clean_trackers(t.decode("utf-8", "replace") for t in found if isinstance(t, bytes))


def _torrent_size(info: Mapping[bytes, BValue], version: str) -> int | None:
    """Total payload size; None when the listing is malformed (the size is advisory, the hash is what matters)."""
    if version != "v2":
        size = _v1_size(info)
        if size is not None or version == "v1":
            return size
    return _file_tree_size(info.get(b"file tree"))


def _v1_size(info: Mapping[bytes, BValue]) -> int | None:
    single = _length(info.get(b"length"))
    if single is not None:
        return single
    files = info.get(b"files")
    if not isinstance(files, list) or not files:
        return None
    total = 0
    for entry in files:
        size = _length(entry.get(b"length")) if isinstance(entry, dict) else None
        if size is None:
            return None
        total += size
    return total


def _file_tree_size(tree: BValue | None) -> int | None:
    """Sum a BEP 52 file tree, where a file is a dict whose b"" key holds {b"length": n}."""
    if not isinstance(tree, dict) or not tree:
        return None
    total = 0
    for key, node in tree.items():
        if key == b"" and isinstance(node, dict):
            size = _length(node.get(b"length"))
        else:
            size = _file_tree_size(node)
        if size is None:
            return None
        total += size
    return total


def _length(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _is_decimal(text: str) -> bool:
    """Plain ASCII digits, short enough for any real size (and for int() to be cheap)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def _show(value: str, limit: int = 60) -> str:
    """A repr short enough for an error message (and one that makes a stray newline visible)."""
    return repr(value if len(value) <= limit else value[:limit] + "…")
