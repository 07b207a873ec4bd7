"""RSS/Atom feeds as a source: fetch politely, parse safely, extract torrent links, judge by rules, record grabs.

Three layers, top to bottom in this file:

1. :func:`read_feed` / :func:`parse_feed` (pure): bytes -> :class:`~daemon115.rules.FeedEntry` list, or a
   :class:`FeedError` that says what is wrong with the body.
2. The HTTP edge: conditional GET, a size cap counted after decompression, redirects followed by hand (so a
   tracker's cookies and headers go only to that tracker), one request at a time per host with a gap.
3. :class:`FeedPoller`: state in ledger meta, backoff, rules, candidates into the ledger.

Decisions (each is pinned by a test):

- Safety before feedparser: a document whose DOCTYPE comes with entity declarations is refused (billion laughs,
  external entities), like defusedxml's default; feedparser never gets bytes it could mistake for a file name.
- Encoding: a BOM wins, then the XML declaration, then the HTTP charset; the one chosen must decode the whole body,
  or the feed fails with the byte offset. Only a body that declares nothing and is not UTF-8 is sniffed
  (charset-normalizer), because an undeclared Shift_JIS feed is still a feed.
- Two readers, one result: a well-formed RSS/Atom document is read with ElementTree (feedparser's SAX handlers
  cost several times more than everything else in a poll); anything else goes to feedparser (no HTML sanitizing,
  no URI resolution inside content), whose lenient parser recovers ill-formed feeds. The poll succeeds with a
  warning if an entry with a link was recovered, and fails ("invalid XML ... no entries recovered") otherwise.
- The magnet's own btih is the entry's info hash: 115 downloads what the magnet names, so a conflicting
  ``infohash`` attribute (the AnimeTosho torznab capture) or ``torrent:infoHash`` loses. Without a magnet: an
  explicit hash field, then a 40-hex path segment of the .torrent URL (torcache, itorrents, AnimeTosho, Mikan).
  Invalid hashes (``(removed)``) are ignored.
- Size: torznab/newznab ``size``, then a namespaced content length or size, then the magnet's ``xl``, then the
  enclosure length, then ``1.2 GiB``-style text in the description. An enclosure length under 2 MiB is the size
  of the .torrent file itself (Doki, MoreThanTV, EZTV), not of the download, and is ignored (Sonarr does the same).
  Description text uses binary units whatever it says (trackers write ``839.71 MB`` for 880,496,711 bytes).
- What is recorded: the magnet if there is one; else, with ``resolve_torrents: true``, the magnet (with its
  trackers) of the downloaded .torrent (10 MiB cap); else the .torrent URL, keyed by the feed's hash when it
  states one and by the URL otherwise; an entry with a hash and no .torrent URL becomes a magnet of that hash. An
  http link without a hash is first asked, without reading its body, whether it redirects to ``magnet:``
  (indexer ``/dl/`` links).
- Entries are judged once: their ids (guid, else link) are remembered per feed, unless the feed's rules change.
  Entries whose grab could not be resolved are not remembered, so the next poll tries again.
"""

from __future__ import annotations

import calendar
import codecs
import contextlib
import dataclasses
import email.utils
import hashlib
import io
import itertools
import json
import re
import threading
import time
import xml.sax
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

import feedparser
import feedparser.api
import requests
from feedparser.datetimes import _parse_date

from daemon115 import intake
from daemon115.config import Feed
from daemon115.ledger import Candidate, Ledger, LedgerError
from daemon115.links import (
    MAX_TORRENT_SIZE,
    Link,
    LinkError,
    btih_to_hex,
    is_info_hash,
    make_magnet,
    parse_link,
    parse_magnet,
    parse_torrent,
)
from daemon115.logs import get_logger
from daemon115.rules import EpisodeKey, FeedEntry, Verdict, evaluate, format_size

__all__ = ["FeedError", "FeedHealth", "FeedPoller", "ParsedFeed", "PollResult", "parse_feed", "read_feed",
           "rss_test_rows"]

BACKOFF_FIRST = 60.0
BACKOFF_MAX = 86400.0
HOST_GAP = 1.0
MAX_REDIRECTS = 5
SEEN_CAP = 5000  # entry ids remembered per feed (at least twice the feed's length)
EPISODE_CAP = 20000
TORRENT_FILE_SIZE_FLOOR = 2 * 1024 * 1024
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"
EPISODES_META = "feeds:episodes"

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_ATTRS = "daemon115_attrs"
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_XML_ENCODING = re.compile(rb"<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([A-Za-z][A-Za-z0-9._:-]*)[\"']")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)
_SPACE = re.compile(rb"[ \t\r\n]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_ENTITY_DECL = re.compile(rb"<!ENTITY", re.IGNORECASE)
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_MAGNET_IN_TEXT = re.compile(r"magnet:\?[^\s\"'<>]+", re.IGNORECASE)
_HASH_SEGMENT = re.compile(r"/([0-9a-fA-F]{40})(?:\.torrent)?(?=/|$)")
_TORRENTISH = re.compile(r"\.torrent(?:$|[?#&])|download", re.IGNORECASE)
# numbers start only where no digit precedes and have bounded length: a run of digits with no unit after it is
# tried once, not from each of its digits (quadratic), and no size overflows a float
_SIZE_TEXT = re.compile(r"(?<![\d.,])(\d{1,15}(?:[.,]\d{1,15})?)\s*([KMGT])(i?)B(?![A-Za-z])", re.IGNORECASE)
_SEEDERS_TEXT = re.compile(r"(?<!\d)(\d{1,9})\s*seeders?\b|\bseed(?:er)?s?\s*:\s*(\d{1,9})(?!\d)", re.IGNORECASE)
_MAX_DIGITS = 18  # a size or count longer than this is nonsense, and int() refuses past 4300 digits
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_UNITS: Mapping[str, int] = MappingProxyType({"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4})
_FIELDS: Mapping[str, str] = MappingProxyType({  # local element name -> the field it gives
    "infohash": "infohash", "info_hash": "infohash", "magneturi": "magneturi", "contentlength": "contentlength",
    "size": "size", "seeds": "seeders", "seeders": "seeders"})


class FeedError(Exception):
    """This feed could not be read this time; the message says why and never contains its URL or secrets."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# ================================================================ parsing (pure)


@dataclass(frozen=True)
class ParsedFeed:
    entries: tuple[FeedEntry, ...]
    warnings: tuple[str, ...] = ()
    encoding: str = "utf-8"


def parse_feed(body: bytes, *, feed: str, url: str, headers: Mapping[str, str] = _NO_HEADERS,
               max_size: int | None = None) -> list[FeedEntry]:
    """The entries of one feed document; ``url`` resolves relative links. Raises FeedError."""
    return list(read_feed(body, feed=feed, url=url, headers=headers, max_size=max_size).entries)


def read_feed(body: bytes, *, feed: str, url: str, headers: Mapping[str, str] = _NO_HEADERS,
              max_size: int | None = None, reader: str = "auto") -> ParsedFeed:
    """Like :func:`parse_feed`, with the warnings (ill-formed XML recovered) and the encoding used.

    A well-formed RSS 2.0 / RSS 1.0 / Atom document is read with ElementTree (several times faster than
    feedparser's SAX handlers); anything else, and everything with ``reader="feedparser"``, by feedparser, whose
    lenient parser recovers ill-formed feeds. Both readers give the same entries (pinned by a test over every
    real-world fixture)."""
    if max_size is not None and len(body) > max_size:
        raise FeedError(f"the response is larger than max_size {format_size(max_size)}")
    if not body.strip():
        raise FeedError("the response is empty")
    encoding = _choose_encoding(body, _header(headers, "content-type"))
    _refuse_unsafe(body if not encoding.startswith("utf-16") and not encoding.startswith("utf-32")
                   else body.decode(encoding, "replace").encode("utf-8"))
    fast = _etree_entries(body.decode(encoding)) if reader == "auto" else None
    if fast is not None:
        return ParsedFeed(tuple(_entry(raw, feed, url) for raw in fast), (), encoding)
    try:
        result = _run_feedparser(body, encoding)
    except Exception as crash:  # feedparser's own bugs on mangled input (e.g. int(None) in <image><width>)
        raise FeedError(f"the document could not be read (feedparser failed with {type(crash).__name__})") \
            from None
    entries = tuple(_entry(raw, feed, url) for raw in result.entries)
    error = result.get("bozo_exception") if result.get("bozo") else None
    xml_error = _describe_xml_error(error) if isinstance(error, xml.sax.SAXException) else None
    if not result.get("version") and not entries:
        detail = f" ({xml_error})" if xml_error else ""
        raise FeedError(f"not an RSS or Atom feed{detail}")
    if xml_error and not any(e.link for e in entries):
        raise FeedError(f"invalid XML ({xml_error}) and no entries could be recovered")
    warnings = (f"invalid XML ({xml_error}); {len(entries)} entries recovered by the lenient parser",) \
        if xml_error else ()
    return ParsedFeed(entries, warnings, encoding)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _choose_encoding(body: bytes, content_type: str | None) -> str:
    for bom, name in _BOMS:
        if body.startswith(bom):
            _must_decode(body, name, "as its byte order mark says")
            return name
    if body.startswith(b"<\x00?\x00") or body.startswith(b"\x00<\x00?"):
        name = "utf-16-le" if body[0] == 0x3C else "utf-16-be"
        _must_decode(body, name, "as its first bytes say")
        return name
    declared = _XML_ENCODING.search(body, 0, 1024)
    http = _CHARSET.search(content_type) if content_type else None
    candidates = [c for c in dict.fromkeys((_codec(declared.group(1).decode("ascii")) if declared else None,
                                             _codec(http.group(1)) if http else None)) if c]
    for name in candidates:
        if _decodes(body, name):
            return name
    if candidates:
        what = "as its XML declaration says" \
            if declared and _codec(declared.group(1).decode("ascii")) == candidates[0] \
            else "as the HTTP Content-Type says"
        _must_decode(body, candidates[0], what)
    if _decodes(body, "utf-8"):
        return "utf-8"
    guess = _sniff_encoding(body)
    if guess:
        return guess
    _must_decode(body, "utf-8", "assumed: nothing declares an encoding")
    raise AssertionError("unreachable")


def _decodes(body: bytes, name: str) -> bool:
    try:
        body.decode(name)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _must_decode(body: bytes, name: str, why: str) -> None:
    try:
        body.decode(name)
    except UnicodeDecodeError as error:
        raise FeedError(f"the body is not valid {name} ({why}): {error.reason} at byte {error.start}") \
            from None


def _sniff_encoding(body: bytes) -> str | None:
    """A legacy encoding for a body that declares none and is not UTF-8; None when nothing decodes it cleanly."""
    try:
        from charset_normalizer import from_bytes
    except ImportError:  # pragma: no cover - requests depends on it
        return None
    best = from_bytes(body[:65536]).best()
    name = _codec(best.encoding) if best else None
    if name and name not in ("utf-8", "ascii") and _decodes(body, name):
        return name
    return None


def _refuse_unsafe(data: bytes) -> None:
    """Refuse entity declarations (expansion bombs, external entities) and HTML pages, before any XML parser."""
    doctype, first = _prolog(data)
    if (doctype is not None or _DOCTYPE.search(data)) and _ENTITY_DECL.search(data):
        # anywhere, not only in the prolog: the lenient parser reads documents that start with junk
        raise FeedError("the document declares XML entities in its DOCTYPE (refused: entity expansion and "
                        "external entities are not allowed)")
    if (doctype or b"").lower().startswith(b"html") or first.lower().startswith((b"<html", b"<head", b"<body")):
        raise FeedError("the server sent an HTML page, not a feed (a login or error page?)")


def _prolog(data: bytes) -> tuple[bytes | None, bytes]:
    """(what follows ``<!DOCTYPE`` if there is one, the first bytes of the root element), skipping comments/PIs."""
    pos = 3 if data.startswith(codecs.BOM_UTF8) else 0
    doctype: bytes | None = None
    while True:
        match = _SPACE.match(data, pos)
        pos = match.end() if match else pos
        if data.startswith(b"<?", pos):
            end = data.find(b"?>", pos + 2)
        elif data.startswith(b"<!--", pos):
            end = data.find(b"-->", pos + 4)
            end = end + 1 if end >= 0 else end
        elif data[pos:pos + 9].upper() == b"<!DOCTYPE":
            doctype = data[pos + 9:pos + 80].lstrip()
            end = data.find(b">", pos + 9)
        else:
            return doctype, data[pos:pos + 16]
        if end < 0:
            return doctype, b""
        pos = end + 2


def _describe_xml_error(error: xml.sax.SAXException) -> str:
    if isinstance(error, xml.sax.SAXParseException):
        return f"line {error.getLineNumber()}, column {error.getColumnNumber()}: {error.getMessage()}"
    return str(error.getMessage())


_ATOM = "{http://www.w3.org/2005/Atom}"
_ATOM03 = "{http://purl.org/atom/ns#}"
_RSS10 = "{http://purl.org/rss/1.0/}"
_RSS090 = "{http://my.netscape.com/rdf/simple/0.9/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_DC = "{http://purl.org/dc/elements/1.1/}"
_CORE_NAMESPACES = ("", _ATOM, _ATOM03, _RSS10, _RSS090, _DC)
_PUBLISHED = ("pubdate", "published", "issued")
_UPDATED = ("date", "updated", "modified")
_SUMMARY = ("description", "summary", "content")


def _etree_entries(text: str) -> list[dict[str, Any]] | None:
    """The items of a well-formed feed as the same kind of dict feedparser gives; None when the document is not
    well-formed, not RSS/Atom or nested too deep to serialize (feedparser then reads it)."""
    try:
        root = ElementTree.fromstring(text.lstrip("\ufeff"))
    except ElementTree.ParseError:
        return None
    items: Iterable[ElementTree.Element]
    if root.tag == "rss":
        items = root.iter("item")
    elif root.tag == f"{_RDF}RDF":
        items = itertools.chain(root.iter(f"{_RSS10}item"), root.iter(f"{_RSS090}item"))
    elif root.tag in (f"{_ATOM}feed", f"{_ATOM03}feed"):
        items = root.iter(root.tag[:-4] + "entry")
    else:
        return None
    try:
        return [_etree_entry(item) for item in items]
    except RecursionError:  # ElementTree.tostring of markup nested thousands deep; feedparser keeps a list
        return None


def _etree_entry(item: ElementTree.Element) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    links: list[dict[str, str]] = []
    about = item.get(f"{_RDF}about")
    if about:
        raw["id"] = about.strip()
    for child in item:
        namespace, _, local = child.tag.rpartition("}")
        namespace += "}" if namespace else ""
        local = local.lower()
        if namespace in _CORE_NAMESPACES and _etree_core(raw, links, child, local):
            continue
        _etree_extension(raw, child, local)
    raw["links"] = links
    return raw


def _etree_core(raw: dict[str, Any], links: list[dict[str, str]], child: ElementTree.Element, local: str) -> bool:
    """Store an RSS/Atom element of an item; False if it is not one (then it may be an extension field)."""
    if local == "title":
        raw.setdefault("title", "".join(child.itertext()).strip())
    elif local == "link":
        href = child.get("href")
        if href is not None:
            rel = child.get("rel") or "alternate"
            links.append({k: v for k, v in (("rel", rel), ("href", href.strip()), ("type", child.get("type")),
                                            ("length", child.get("length"))) if v is not None})
            if rel == "alternate":
                raw.setdefault("link", href.strip())
        else:
            raw["link"] = (child.text or "").strip()
            links.append({"rel": "alternate", "href": raw["link"]})
    elif local == "enclosure":
        links.append({k: v for k, v in (("rel", "enclosure"), ("href", (child.get("url") or "").strip()),
                                        ("type", child.get("type")), ("length", child.get("length")))
                      if v is not None})
    elif local in ("guid", "id"):
        raw.setdefault("id", (child.text or "").strip())
    elif local in _SUMMARY:  # inline XHTML is kept as markup: a magnet may sit in an href
        raw.setdefault("summary", ElementTree.tostring(child, "unicode") if len(child) else child.text or "")
    elif local in _PUBLISHED:
        raw["published_parsed"] = _parse_date((child.text or "").strip())
    elif local in _UPDATED:
        raw["updated_parsed"] = _parse_date((child.text or "").strip())
    else:
        return False
    return True


def _etree_extension(raw: dict[str, Any], child: ElementTree.Element, local: str) -> None:
    """Namespaced torrent fields, one level of nesting (ezRSS's and Mikan's ``<torrent>`` blocks), and every
    torznab/newznab ``attr``."""
    if local == "attr":
        name, value = child.get("name"), child.get("value")
        if name is not None and value is not None:
            raw.setdefault(_ATTRS, []).append((name.lower(), value))
        return
    if local in _FIELDS:
        text = (child.text or "").strip()
        if text:
            raw.setdefault(local, text)
        return
    if local == "pubdate" and "published_parsed" not in raw:
        raw["published_parsed"] = _parse_date((child.text or "").strip())
        return
    for grandchild in child:
        inner = grandchild.tag.rpartition("}")[2].lower()
        if inner in _FIELDS or inner in ("attr", "pubdate"):
            _etree_extension(raw, grandchild, inner)


class _AttrCapture:
    """torznab/newznab put their fields in repeated ``<torznab:attr name= value=/>``; feedparser keeps only the
    last one, so every one is collected into the entry under ``daemon115_attrs``."""

    inentry: int
    entries: list[dict[str, Any]]

    def unknown_starttag(self, tag: str, attrs: list[tuple[str, str]]) -> Any:
        if tag.rpartition(":")[2] == "attr" and self.inentry and self.entries:
            values = {str(k).lower(): v for k, v in attrs}
            name, value = values.get("name"), values.get("value")
            if isinstance(name, str) and isinstance(value, str):
                self.entries[-1].setdefault(_ATTRS, []).append((name.lower(), value))
        return super().unknown_starttag(tag, attrs)  # type: ignore[misc]


class _StrictParser(_AttrCapture, feedparser.api.StrictFeedParser):  # type: ignore[misc]
    pass


class _LooseParser(_AttrCapture, feedparser.api.LooseFeedParser):  # type: ignore[misc]
    pass


def _run_feedparser(body: bytes, encoding: str) -> Any:
    """feedparser.parse's own steps, with the attr-collecting parsers and without HTML sanitizing or relative-URI
    resolution inside content (a link extractor needs neither; they are most of feedparser's time)."""
    headers = {"content-type": f"application/xml; charset={encoding}"}
    result = feedparser.FeedParserDict(bozo=False, entries=[], feed=feedparser.FeedParserDict(), headers=headers)
    data = feedparser.api.convert_to_utf8(headers, body, result)
    strict = bool(result.get("encoding"))
    result["version"], data, entities = feedparser.api.replace_doctype(data)
    base = ""  # with a base, feedparser joins URLs at every element; the few relative links are joined later
    parser: Any = None
    if strict:
        parser = _StrictParser(base, None, "utf-8")
        parser.resolve_relative_uris = False
        parser.sanitize_html = False
        sax = xml.sax.make_parser(feedparser.api.PREFERRED_XML_PARSERS)
        sax.setFeature(xml.sax.handler.feature_namespaces, 1)
        with contextlib.suppress(xml.sax.SAXNotSupportedException):
            sax.setFeature(xml.sax.handler.feature_external_ges, 0)
        sax.setContentHandler(parser)
        sax.setErrorHandler(parser)
        source = xml.sax.xmlreader.InputSource()
        source.setByteStream(io.BytesIO(data))
        try:
            sax.parse(source)
        except xml.sax.SAXException as error:
            result["bozo"] = True
            result["bozo_exception"] = parser.exc or error
            strict = False
    if not strict:
        parser = _LooseParser(base, None, "utf-8", entities)
        parser.resolve_relative_uris = False
        parser.sanitize_html = False
        parser.feed(data.decode("utf-8", "replace"))
    result["feed"] = parser.feeddata
    result["entries"] = parser.entries
    result["version"] = result["version"] or parser.version
    return result


# ---------------------------------------------------------------- one entry


def _entry(raw: Mapping[str, Any], feed: str, url: str) -> FeedEntry:
    title = " ".join(str(raw.get("title") or "").split())
    links = [{**link, "href": _absolute(str(link["href"]), url)} for link in raw.get("links") or ()
             if isinstance(link, Mapping) and link.get("href")]
    enclosures = [link for link in links if link.get("rel") == "enclosure"]
    fields = _extension_fields(raw)
    attrs = _attrs(raw)
    description = str(raw.get("summary") or "")
    guid = str(raw.get("id") or "").strip()
    # feedparser copies a permalink guid into "link"; like ElementTree, count the guid only if it is an http URL
    link_text = "" if raw.get("guidislink") and raw.get("link") == raw.get("id") else str(raw.get("link") or "")
    page = _absolute(link_text, url) or next((str(link["href"]) for link in links), "")
    torrent_enclosure = next((enc for enc in enclosures if _is_torrent_enclosure(enc)), None)

    magnet = _first_magnet(
        attrs.get("magneturl"), fields.get("magneturi"),
        *(str(enc["href"]) for enc in enclosures), page, guid,
        *(str(link["href"]) for link in links),
    ) or _magnet_in_text(description)
    torrent_url = _torrent_url(torrent_enclosure, page, guid)
    explicit_hash = _valid_hash(attrs.get("infohash"), fields.get("infohash"))
    info_hash = magnet.info_hash if magnet else explicit_hash or _hash_in_url(torrent_url)
    link = magnet.url if magnet else torrent_url or page or (guid if _is_http(guid) else None) or None
    return FeedEntry(
        feed=feed,
        entry_id=guid or page or link or (f"title:{title}" if title else ""),
        title=title,
        link=link,
        info_hash=info_hash,
        magnet=magnet.url if magnet else None,
        torrent_url=torrent_url,
        size=_size(attrs, fields, magnet, torrent_enclosure, description),
        seeders=_seeders(attrs, fields, description),
        published=_published(raw),
    )


def _absolute(href: str, base: str) -> str:
    href = href.strip()
    if not href or _SCHEME.match(href):
        return href
    try:
        return urljoin(base, href)
    except ValueError:
        return href


def _extension_fields(raw: Mapping[str, Any]) -> dict[str, str]:
    """Namespaced torrent fields by local name: ``nyaa_infohash``, ``torrent_magneturi``, ezRSS's default-namespace
    ``infohash``, ``showrss_info_hash``, a bare ``<size>``... (feedparser names them prefix_localname)."""
    found: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            continue
        local = key if key in _FIELDS else key.split("_", 1)[-1]
        name = _FIELDS.get(local)
        if name and name not in found and value.strip():
            found[name] = value.strip()
    return found


def _attrs(raw: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in raw.get(_ATTRS) or ():
        found.setdefault(name, value.strip())
    return found


def _is_http(url: str | None) -> bool:
    return bool(url) and str(url)[:8].lower().startswith(("http://", "https://"))


def _is_torrent_enclosure(enclosure: Mapping[str, Any]) -> bool:
    href = str(enclosure.get("href") or "")
    kind = str(enclosure.get("type") or "").lower()
    return "bittorrent" in kind or href.lower().startswith("magnet:") or \
        (_is_http(href) and href.lower().split("?", 1)[0].endswith(".torrent"))


def _first_magnet(*candidates: str | None) -> Link | None:
    for text in candidates:
        if text and text.lstrip()[:7].lower() == "magnet:":
            try:
                return parse_magnet(text.strip().replace("&amp;", "&"))
            except LinkError:
                continue
    return None


def _magnet_in_text(text: str) -> Link | None:
    if "magnet:" not in text.lower():
        return None
    return _first_magnet(*(m.group(0) for m in _MAGNET_IN_TEXT.finditer(text)))


def _torrent_url(enclosure: Mapping[str, Any] | None, page: str, guid: str) -> str | None:
    if enclosure is not None and _is_http(str(enclosure["href"])):
        return str(enclosure["href"]).strip()
    for url in (page, guid):
        if _is_http(url) and _TORRENTISH.search(url.split("://", 1)[1].partition("/")[2]):
            return url
    return None


def _valid_hash(*candidates: str | None) -> str | None:
    for text in candidates:
        if text and is_info_hash(text.strip()):
            return btih_to_hex(text.strip())
    return None


def _hash_in_url(url: str | None) -> str | None:
    try:
        match = _HASH_SEGMENT.search(urlsplit(url).path) if url else None
    except ValueError:  # "http://[broken/..."
        return None
    return match.group(1).lower() if match else None


def _size(attrs: Mapping[str, str], fields: Mapping[str, str], magnet: Link | None,
          enclosure: Mapping[str, Any] | None, description: str) -> int | None:
    for text in (attrs.get("size"), fields.get("contentlength"), fields.get("size")):
        size = _size_value(text)
        if size is not None:
            return size
    if magnet and magnet.size:
        return magnet.size
    length = _int(str(enclosure.get("length") or "")) if enclosure is not None else None
    if length is not None and length >= TORRENT_FILE_SIZE_FLOOR:
        return length
    return _size_in_text(description)


def _size_value(text: str | None) -> int | None:
    if not text:
        return None
    number = _int(text)
    return number if number is not None and number > 0 else _size_in_text(text)


def _size_in_text(text: str) -> int | None:
    match = _SIZE_TEXT.search(text)
    if not match:
        return None
    number = match.group(1)
    whole, sep, tail = number.partition(",")
    number = whole + tail if sep and len(tail) == 3 else number.replace(",", ".")
    return round(float(number) * _UNITS[match.group(2).upper()])


def _seeders(attrs: Mapping[str, str], fields: Mapping[str, str], description: str) -> int | None:
    for text in (attrs.get("seeders"), fields.get("seeders")):
        number = _int(text or "")
        if number is not None:
            return number
    match = _SEEDERS_TEXT.search(description) if "seed" in description.lower() else None
    return int(match.group(1) or match.group(2)) if match else None


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and text.isascii() and len(text) <= _MAX_DIGITS else None


def _published(raw: Mapping[str, Any]) -> float | None:
    parsed = raw.get("published_parsed") or raw.get("updated_parsed")
    return float(calendar.timegm(parsed)) if parsed else None


# ================================================================ results and state


@dataclass(frozen=True)
class PollResult:
    feed: str
    status: str  # "ok" | "not-modified" | "error" | "skipped-backoff"
    entries: tuple[FeedEntry, ...]
    verdicts: tuple[Verdict, ...]  # one per entry, same order
    queued: int
    duplicates: int
    error: str | None
    missed_warning: bool
    warnings: tuple[str, ...] = ()
    evaluated: int = 0  # entries judged this time (the rest were seen in an earlier poll)


@dataclass(frozen=True)
class FeedHealth:
    feed: str
    last_poll: float | None
    last_ok: float | None
    failures: int
    backoff_until: float | None
    last_error: str | None


@dataclass(frozen=True)
class _FeedState:
    url: str | None = None  # digest of the URL the validators belong to (a passkey stays out of the ledger)
    etag: str | None = None
    last_modified: str | None = None
    last_poll: float | None = None
    last_ok: float | None = None
    failures: int = 0
    backoff_until: float | None = None
    last_error: str | None = None
    rules: str | None = None  # digest of the rules the remembered entries were judged by

    @classmethod
    def load(cls, text: str | None) -> _FeedState:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}) if isinstance(data, dict) else cls()

    def dump(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v is not None},
                          separators=(",", ":"))


SEEN_VERDICT = Verdict(False, None, "seen in an earlier poll", None)
REPEATED_VERDICT = Verdict(False, None, "the same entry as an earlier one in this feed", None)


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def _rules_digest(feed: Feed) -> str:
    return _digest(repr((feed.rules, feed.accept_all, feed.target, feed.resolve_torrents)))


class _SeenIds:
    """Entry-id digests of one feed, oldest first, trimmed from the front."""

    def __init__(self, text: str | None) -> None:
        try:
            ids = json.loads(text) if text else []
        except ValueError:
            ids = []
        self._ids: dict[str, None] = dict.fromkeys(i for i in ids if isinstance(i, str)) \
            if isinstance(ids, list) else {}

    def __contains__(self, digest: str) -> bool:
        return digest in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def with_ids(self, digests: Sequence[str], cap: int) -> _SeenIds:
        """A copy with ``digests`` as the newest, trimmed to ``cap``; the original stays as it was until the
        copy is committed, so a failed commit forgets nothing."""
        ids = dict(self._ids)
        for digest in digests:
            ids.pop(digest, None)
            ids[digest] = None
        for digest in list(ids)[:max(0, len(ids) - cap)]:
            del ids[digest]
        copy = _SeenIds(None)
        copy._ids = ids
        return copy

    def dump(self) -> str:
        return json.dumps(list(self._ids), separators=(",", ":"))


class _EpisodeMemory:
    """The highest version grabbed per show/season/episode, shared by every feed (first release wins)."""

    def __init__(self, text: str | None) -> None:
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        self._versions: dict[str, int] = {k: v for k, v in data.items() if isinstance(v, int)} \
            if isinstance(data, dict) else {}
        self.lock = threading.RLock()

    @staticmethod
    def _key(key: EpisodeKey) -> str:
        return f"{key.show}\x1f{key.season}\x1f{key.episode}"

    def seen(self, key: EpisodeKey) -> bool:
        return self._versions.get(self._key(key), 0) >= key.version

    def remember(self, key: EpisodeKey) -> int:
        name = self._key(key)
        before = self._versions.pop(name, 0)
        self._versions[name] = max(before, key.version)
        if len(self._versions) > EPISODE_CAP:
            del self._versions[next(iter(self._versions))]
        return before

    def restore(self, key: EpisodeKey, before: int) -> None:
        name = self._key(key)
        if before:
            self._versions[name] = before
        else:
            self._versions.pop(name, None)

    def dump(self) -> str:
        return json.dumps(self._versions, separators=(",", ":"), ensure_ascii=False)


class _Overlay:
    """Episode memory for `rss test`: reads the real memory, keeps its own grabs to itself."""

    def __init__(self, memory: _EpisodeMemory) -> None:
        self._memory = memory
        self._grabbed: dict[tuple[str, int, int], int] = {}
        self.lock = memory.lock

    def seen(self, key: EpisodeKey) -> bool:
        return self._memory.seen(key) or self._grabbed.get((key.show, key.season, key.episode), 0) >= key.version

    def remember(self, key: EpisodeKey) -> int:
        name = (key.show, key.season, key.episode)
        self._grabbed[name] = max(self._grabbed.get(name, 0), key.version)
        return 0

    def restore(self, key: EpisodeKey, before: int) -> None:
        self._grabbed.pop((key.show, key.season, key.episode), None)


# ================================================================ HTTP


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: Mapping[str, str]


class _HostGate:
    """One request at a time per host, with a gap between them: trackers answer 429 to bursts."""

    def __init__(self, gap: float, sleep: Callable[[float], None]) -> None:
        self._gap = gap
        self._sleep = sleep
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._last: dict[str, float] = {}

    @contextmanager
    def turn(self, host: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(host, threading.Lock())
        with lock:
            last = self._last.get(host)
            if last is not None:
                wait = last + self._gap - time.monotonic()
                if wait > 0:
                    self._sleep(wait)
            try:
                yield
            finally:
                self._last[host] = time.monotonic()


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        return (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return ""


def _same_site(a: str, b: str) -> bool:
    """Whether the feed's headers and cookies may go to ``b``: the feed's host, or a subdomain either way."""
    a, b = a.split(":")[0], b.split(":")[0]
    return bool(a) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():  # "¹".isdigit() too: only ASCII digits are seconds, and a day is the most waited
        return min(float(value), BACKOFF_MAX) if value.isascii() else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now)


def _join(url: str, location: str, what: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError:  # "http://[broken/..."
        raise FeedError(f"{what} redirects to a URL that does not parse") from None


def _declared_length(headers: Mapping[str, str]) -> int | None:
    """Content-Length as a number; a run of digits too long to be one is more than any cap."""
    text = (headers.get("Content-Length") or "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return int(text) if len(text) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _request_error(error: requests.RequestException, url: str, timeout: float) -> FeedError:
    """A message about a failed request that names the host, never the URL (passkeys live in URLs)."""
    host = _host(url) or "the server"
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return FeedError(f"could not connect to {host} within {timeout:g}s")
    if isinstance(error, requests.exceptions.ReadTimeout):
        return FeedError(f"{host} did not answer within {timeout:g}s")
    if isinstance(error, requests.exceptions.SSLError):
        return FeedError(f"TLS error talking to {host}")
    if isinstance(error, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return FeedError(f"the response from {host} was cut off or could not be decompressed")
    if isinstance(error, requests.exceptions.ConnectionError):
        cause = _ERRNO.search(str(error))
        return FeedError(f"could not connect to {host}" + (f": {cause.group(1).strip()}" if cause else ""))
    if isinstance(error, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                          requests.exceptions.InvalidSchema)):
        return FeedError("the URL is not a valid http(s) URL")
    return FeedError(f"request to {host} failed ({type(error).__name__})")


# ================================================================ the poller


class FeedPoller:
    """Polls feeds, judges their entries and records the grabs; all its memory lives in the ledger's meta table.

    ``record=False`` is `rss test`: it fetches unconditionally, judges every entry (remembered or not), resolves
    links like a real poll, and writes nothing anywhere.
    """

    def __init__(self, feeds: Sequence[Feed], ledger: Ledger, *, session: requests.Session | None = None,
                 log: Any = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, record: bool = True, host_gap: float = HOST_GAP,
                 max_parallel: int = 4) -> None:
        self.feeds: tuple[Feed, ...] = tuple(feeds)
        self._ledger = ledger
        self._owns_session = session is None
        self._session = session or requests.Session()
        self._log = log or get_logger("daemon115.feeds")
        self._clock = clock
        self._record = record
        self._gate = _HostGate(host_gap, sleep)
        self._max_parallel = max(1, max_parallel)
        self._states: dict[str, _FeedState] = {}
        self._seen: dict[str, _SeenIds] = {}
        self._episodes: _EpisodeMemory | None = None
        self._overlay: _Overlay | None = None
        self._guard = threading.RLock()
        self._feed_locks: dict[str, threading.Lock] = {}

    def close(self) -> None:
        """Close the HTTP session if this poller made it (a session passed in belongs to the caller)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FeedPoller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- scheduling ----------------------------------------------------------------------------------------

    def due(self, now: float) -> list[tuple[Feed, float]]:
        """When each feed should next be polled: after its interval (plus a steady per-feed jitter, so feeds do
        not fire together), or when its backoff ends after a failure; a feed never polled is due now."""
        plan = []
        for feed in self.feeds:
            state = self._state(feed)
            if state.failures and state.backoff_until is not None:
                at = state.backoff_until
            elif state.last_poll is None:
                at = now
            else:
                at = state.last_poll + feed.interval + _jitter(feed, state.last_poll)
            plan.append((feed, at))
        return plan

    def health(self) -> list[FeedHealth]:
        return [FeedHealth(feed.name, s.last_poll, s.last_ok, s.failures, s.backoff_until, s.last_error)
                for feed in self.feeds for s in (self._state(feed),)]

    def poll_all(self, *, force: bool = False) -> list[PollResult]:
        """Every feed once, whatever its interval (``force`` also ignores backoff); hosts in parallel, feeds of
        one host one after another; one feed's failure is its own result and never stops the others."""
        if not self._record:
            with self._guard:
                self._overlay = None  # each `rss test` pass starts from the real memory
        by_host: dict[str, list[int]] = {}
        for index, feed in enumerate(self.feeds):
            by_host.setdefault(_host(feed.url), []).append(index)
        results: list[PollResult | None] = [None] * len(self.feeds)

        def run(indices: list[int]) -> None:
            for index in indices:
                results[index] = self.poll(self.feeds[index], force=force)

        groups = list(by_host.values())
        if len(groups) <= 1:
            for group in groups:
                run(group)
        else:
            with ThreadPoolExecutor(max_workers=min(self._max_parallel, len(groups)),
                                    thread_name_prefix="feeds") as pool:
                list(pool.map(run, groups))
        return [result for result in results if result is not None]

    # -- one poll ------------------------------------------------------------------------------------------

    def poll(self, feed: Feed, *, force: bool = False) -> PollResult:
        """One feed, now. Never raises: every failure is the result's ``error`` (one feed must never stop the
        daemon's other work)."""
        try:
            return self._poll(feed, force)
        except LedgerError as error:
            self._log.error("feed poll could not use the ledger", feed=feed.name, error=str(error))
            return _error_result(feed, f"the ledger is not available: {error}")
        except Exception as error:
            self._log.error("feed poll crashed", feed=feed.name, error=f"{type(error).__name__}: {error}")
            return _error_result(feed, f"internal error: {type(error).__name__}")

    def _poll(self, feed: Feed, force: bool) -> PollResult:
        with self._feed_lock(feed.name):
            started = time.perf_counter()
            state = self._state(feed)
            now = self._clock()
            if self._record and not force and state.backoff_until is not None and now < state.backoff_until:
                return _error_result(feed, f"backing off until {_iso(state.backoff_until)} after "
                                           f"{state.failures} failure(s): {state.last_error}",
                                     status="skipped-backoff")
            try:
                response = self._fetch_feed(feed, state if self._record else None)
                if response.status == 304:
                    return self._not_modified(feed, state, now, started)
                parsed = read_feed(response.body, feed=feed.name, url=feed.url, headers=response.headers,
                                   max_size=feed.max_size)
            except FeedError as error:
                return self._failed(feed, state, now, error)
            return self._process(feed, state, now, parsed, response, started)

    def _not_modified(self, feed: Feed, state: _FeedState, now: float, started: float) -> PollResult:
        if self._record:
            self._save_state(feed, dataclasses.replace(state, last_poll=now, last_ok=now, failures=0,
                                                       backoff_until=None, last_error=None))
        self._log.debug("feed not modified", feed=feed.name, ms=round((time.perf_counter() - started) * 1000, 1))
        return PollResult(feed.name, "not-modified", (), (), 0, 0, None, False)

    def _failed(self, feed: Feed, state: _FeedState, now: float, error: FeedError) -> PollResult:
        message = str(error)
        if self._record:
            failures = state.failures + 1
            pause = min(BACKOFF_FIRST * 2 ** min(failures - 1, 20), BACKOFF_MAX)
            if error.retry_after is not None:
                pause = min(max(pause, error.retry_after), BACKOFF_MAX)
            self._save_state(feed, dataclasses.replace(state, last_poll=now, failures=failures,
                                                       backoff_until=now + pause, last_error=message))
            self._log.warning("feed poll failed", feed=feed.name, error=message, failures=failures,
                              retry_in=round(pause))
        return _error_result(feed, message)

    def _process(self, feed: Feed, state: _FeedState, now: float, parsed: ParsedFeed, response: _Response,
                 started: float) -> PollResult:
        entries = list(parsed.entries)
        seen = self._seen_ids(feed) if self._record else None
        rules = _rules_digest(feed)
        rejudge = state.rules != rules
        digests = [_digest(entry.entry_id) for entry in entries]
        missed = bool(seen is not None and len(seen) and entries and state.last_ok is not None
                      and not any(d in seen for d in digests))
        memory = self._memory()
        verdicts: list[Verdict] = [SEEN_VERDICT] * len(entries)
        candidates: list[Candidate] = []
        unresolved: set[int] = set()
        remembered: list[tuple[EpisodeKey, int]] = []
        evaluated = 0
        for index in _repeats(digests):
            verdicts[index] = REPEATED_VERDICT
        for index in _chronological(entries):
            entry, digest = entries[index], digests[index]
            if verdicts[index] is REPEATED_VERDICT or (seen is not None and not rejudge and digest in seen):
                continue
            evaluated += 1
            with memory.lock:
                verdict = evaluate(entry, feed, now=now, episodes_seen=memory.seen)
                if verdict.grab and verdict.episode is not None:
                    remembered.append((verdict.episode, memory.remember(verdict.episode)))
            if verdict.grab:
                verdict, entry, candidate = self._grab(feed, entry, verdict)
                entries[index] = entry
                if candidate is None:
                    unresolved.add(index)
                    if verdict.episode is not None:  # not grabbed after all: a later release may be
                        with memory.lock:
                            key, before = remembered.pop()
                            memory.restore(key, before)
                else:
                    candidates.append(candidate)
            verdicts[index] = verdict
        queued = duplicates = 0
        if self._record and seen is not None:
            try:
                queued, duplicates = self._commit(feed, state, now, response, rules, candidates, seen,
                                                  [d for i, d in enumerate(digests) if i not in unresolved],
                                                  episodes_changed=bool(remembered))
            except LedgerError as error:
                with memory.lock:
                    for key, before in reversed(remembered):
                        memory.restore(key, before)
                self._log.error("feed results could not be recorded", feed=feed.name, error=str(error))
                return _error_result(feed, f"the ledger could not record this poll: {error}")
        if missed:
            self._log.warning("feed may have missed entries", feed=feed.name, entries=len(entries),
                              hint="none of this poll's entries was seen before: the feed lists fewer entries "
                                   "than arrive between two polls; shorten the interval")
        for warning in parsed.warnings:
            self._log.warning("feed recovered from invalid XML", feed=feed.name, detail=warning)
        self._log.info("feed polled", feed=feed.name, entries=len(entries), evaluated=evaluated,
                       grabbed=len(candidates), queued=queued, duplicates=duplicates,
                       ms=round((time.perf_counter() - started) * 1000, 1))
        return PollResult(feed.name, "ok", tuple(entries), tuple(verdicts), queued, duplicates, None, missed,
                          parsed.warnings, evaluated)

    def _commit(self, feed: Feed, state: _FeedState, now: float, response: _Response, rules: str,
                candidates: list[Candidate], seen: _SeenIds, digests: list[str], *,
                episodes_changed: bool) -> tuple[int, int]:
        """Record the grabs, then the memory of what was judged, in one transaction: a crash in between would
        otherwise forget grabs (memory saved first) or re-judge entries (harmless, but not this way round)."""
        new_seen = seen.with_ids(digests, max(SEEN_CAP, 2 * len(digests)))
        new_state = dataclasses.replace(
            state, url=_digest(feed.url), etag=_header(response.headers, "etag"),
            last_modified=_header(response.headers, "last-modified"), last_poll=now, last_ok=now, failures=0,
            backoff_until=None, last_error=None, rules=rules)
        memory = self._episode_memory()
        with self._ledger.transaction():
            recorded = self._ledger.record(candidates)
            self._ledger.meta_set(f"feed:{feed.name}:seen", new_seen.dump())
            if episodes_changed:
                with memory.lock:
                    self._ledger.meta_set(EPISODES_META, memory.dump())
            self._ledger.meta_set(f"feed:{feed.name}", new_state.dump())
        self._seen[feed.name] = new_seen
        self._states[feed.name] = new_state
        if state.failures:
            self._log.info("feed recovered", feed=feed.name, after_failures=state.failures)
        queued = sum(1 for r in recorded if r.outcome != "duplicate")
        return queued, len(recorded) - queued

    # -- grabbing ------------------------------------------------------------------------------------------

    def _grab(self, feed: Feed, entry: FeedEntry, verdict: Verdict
              ) -> tuple[Verdict, FeedEntry, Candidate | None]:
        """The link to record for a grabbed entry (resolving redirects and torrents), or why there is none."""
        try:
            link = self._link_for(feed, entry)
        except (FeedError, LinkError) as error:
            failed = dataclasses.replace(verdict, grab=False,
                                         reason=f"{verdict.reason}, but the link could not be resolved: {error}")
            return failed, entry, None
        link = dataclasses.replace(link, name=link.name or entry.title or None,
                                   size=link.size if link.size is not None else entry.size)
        if link.kind == "magnet":
            entry = dataclasses.replace(entry, link=link.url, magnet=link.url,
                                        info_hash=link.info_hash or entry.info_hash)
        candidate = intake.candidate(link, target=verdict.target or feed.target, source=f"feed:{feed.name}",
                                     rule=verdict.rule, title=entry.title or None)
        if not self._record:
            known = self._ledger.get(candidate.key)
            if known is not None:
                verdict = dataclasses.replace(verdict, reason=f"{verdict.reason} (already in the ledger: "
                                                              f"{known.status})")
        return verdict, entry, candidate

    def _link_for(self, feed: Feed, entry: FeedEntry) -> Link:
        if entry.magnet:
            return parse_magnet(entry.magnet)
        if entry.torrent_url and feed.resolve_torrents:
            return self._resolve(feed, entry.torrent_url, read_torrent=True) or parse_link(entry.torrent_url)
        if entry.info_hash and not entry.torrent_url:
            return make_magnet(info_hash=entry.info_hash, name=entry.title or None, size=entry.size)
        url = entry.torrent_url or entry.link or ""
        if not _is_http(url):
            return parse_link(url)
        plain = parse_link(url)
        if entry.info_hash:
            return dataclasses.replace(plain, info_hash=entry.info_hash)
        return self._resolve(feed, url, read_torrent=False) or plain

    def _resolve(self, feed: Feed, url: str, *, read_torrent: bool) -> Link | None:
        """Follow ``url``'s redirects by hand: a ``magnet:`` Location is the link; otherwise, with
        ``read_torrent``, the .torrent body (capped) becomes a magnet. Without it, no body is read."""
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._get(feed, url, stream=True)
            try:
                location = response.headers.get("Location") if response.is_redirect else None
                if location is not None:
                    location = location.strip()
                    if location[:7].lower() == "magnet:":
                        return parse_magnet(location)
                    url = _join(url, location, "the download link")
                    if not _is_http(url):
                        raise FeedError("the download link redirects to something that is not http(s) or magnet")
                    continue
                if response.status_code >= 400:
                    raise FeedError(f"the download link answered HTTP {response.status_code}")
                if not read_torrent:
                    return None
                body = self._read_capped(response, MAX_TORRENT_SIZE, feed.timeout, "the .torrent")
            finally:
                response.close()
            return parse_torrent(body).to_link()
        raise FeedError(f"the download link redirects more than {MAX_REDIRECTS} times")

    # -- fetching ------------------------------------------------------------------------------------------

    def _fetch_feed(self, feed: Feed, state: _FeedState | None) -> _Response:
        extra: dict[str, str] = {}
        if state is not None and state.url == _digest(feed.url):
            if state.etag:
                extra["If-None-Match"] = state.etag
            if state.last_modified:
                extra["If-Modified-Since"] = state.last_modified
        url = feed.url
        for _hop in range(MAX_REDIRECTS + 1):
            response = self._get(feed, url, stream=True, extra=extra)
            try:
                if response.is_redirect and response.headers.get("Location"):
                    location = response.headers["Location"].strip()
                    url = _join(url, location, "the feed")
                    if not _is_http(url):
                        raise FeedError("the feed redirects to something that is not an http(s) URL")
                    continue
                if response.status_code == 304:
                    return _Response(304, b"", response.headers)
                if response.status_code >= 400:
                    raise FeedError(f"HTTP {response.status_code} {response.reason or ''}".strip(),
                                    retry_after=_retry_after(response.headers.get("Retry-After"), self._clock()))
                body = self._read_capped(response, feed.max_size, feed.timeout, "the response")
                return _Response(response.status_code, body, response.headers)
            finally:
                response.close()
        raise FeedError(f"the feed redirects more than {MAX_REDIRECTS} times")

    def _get(self, feed: Feed, url: str, *, stream: bool, extra: Mapping[str, str] = _NO_HEADERS
             ) -> requests.Response:
        headers = {"User-Agent": feed.user_agent, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
        trusted = _same_site(_host(feed.url), _host(url))
        if trusted:
            headers.update(feed.headers)
        headers.update(extra)
        host = _host(url)
        with self._gate.turn(host):
            try:
                return self._session.get(url, headers=headers, cookies=dict(feed.cookies) if trusted else None,
                                         timeout=feed.timeout, stream=stream, allow_redirects=False)
            except requests.RequestException as error:
                raise _request_error(error, url, feed.timeout) from None
            except ValueError:  # urllib's "Invalid IPv6 URL", from inside requests
                raise FeedError("the URL is not a valid http(s) URL") from None

    def _read_capped(self, response: requests.Response, cap: int, timeout: float, what: str) -> bytes:
        """The body, decompressed, refused past ``cap`` bytes (a gzip bomb stops there) or ``timeout`` seconds."""
        declared = _declared_length(response.headers)
        if declared is not None and not response.headers.get("Content-Encoding") and declared > cap:
            raise FeedError(f"{what} is {format_size(declared)}, above the cap of {format_size(cap)}")
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(65536):
                total += len(chunk)
                if total > cap:
                    raise FeedError(f"{what} is larger than the cap of {format_size(cap)} (counted after "
                                    "decompression); stopped reading")
                if time.monotonic() > deadline:
                    raise FeedError(f"{what} took longer than {timeout:g}s to arrive")
                chunks.append(chunk)
        except requests.RequestException as error:
            raise _request_error(error, response.url or "", timeout) from None
        return b"".join(chunks)

    # -- memory --------------------------------------------------------------------------------------------

    def _feed_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._feed_locks.setdefault(name, threading.Lock())

    def _state(self, feed: Feed) -> _FeedState:
        state = self._states.get(feed.name)
        if state is None:
            state = _FeedState.load(self._ledger.meta_get(f"feed:{feed.name}"))
            self._states[feed.name] = state
        return state

    def _save_state(self, feed: Feed, state: _FeedState) -> None:
        self._states[feed.name] = state
        try:
            self._ledger.meta_set(f"feed:{feed.name}", state.dump())
        except LedgerError as error:
            self._log.error("feed state could not be saved", feed=feed.name, error=str(error))

    def _seen_ids(self, feed: Feed) -> _SeenIds:
        seen = self._seen.get(feed.name)
        if seen is None:
            seen = _SeenIds(self._ledger.meta_get(f"feed:{feed.name}:seen"))
            self._seen[feed.name] = seen
        return seen

    def _memory(self) -> _EpisodeMemory | _Overlay:
        """The real episode memory, or for `rss test` the overlay shared by the feeds of one pass."""
        if self._record:
            return self._episode_memory()
        with self._guard:
            if self._overlay is None:
                self._overlay = _Overlay(self._episode_memory())
            return self._overlay

    def _episode_memory(self) -> _EpisodeMemory:
        with self._guard:
            if self._episodes is None:
                self._episodes = _EpisodeMemory(self._ledger.meta_get(EPISODES_META))
            return self._episodes


def _error_result(feed: Feed, message: str, *, status: str = "error") -> PollResult:
    return PollResult(feed.name, status, (), (), 0, 0, message, False)


def _repeats(digests: Sequence[str]) -> list[int]:
    """Indices of entries listed a second time in one document (Prowlarr repeats items)."""
    first: set[str] = set()
    repeats = []
    for index, digest in enumerate(digests):
        if digest in first:
            repeats.append(index)
        first.add(digest)
    return repeats


def _chronological(entries: Sequence[FeedEntry]) -> list[int]:
    """Indices oldest first, so the earliest release of an episode is the one grabbed; undated entries first, in
    reverse document order (feeds list newest first)."""
    def when(index: int) -> float:
        published = entries[index].published
        return published if published is not None else float("-inf")

    return sorted(reversed(range(len(entries))), key=when)


def _jitter(feed: Feed, last_poll: float) -> float:
    fraction = int(_digest(f"{feed.name}\x1f{int(last_poll)}"), 16) / 2**64
    return fraction * min(0.1 * feed.interval, 300.0)


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def rss_test_rows(results: Sequence[PollResult]) -> list[dict[str, Any]]:
    """The `rss test --json` array: one object per entry of every feed that was read."""
    return [
        {"feed": result.feed, "title": entry.title, "link": entry.link, "info_hash": entry.info_hash,
         "size": entry.size, "grab": verdict.grab, "rule": verdict.rule, "reason": verdict.reason}
        for result in results
        for entry, verdict in zip(result.entries, result.verdicts, strict=True)
    ]
