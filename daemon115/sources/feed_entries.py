"""A feed's bytes -> its entries (pure): safe parsing, encodings, links, hashes, sizes.

Decisions (each is pinned by a test in tests/test_feed_entries.py or tests/test_feeds.py):

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
"""

from __future__ import annotations

import calendar
import codecs
import contextlib
import io
import itertools
import re
import xml.sax
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree import ElementTree

import feedparser
import feedparser.api
from feedparser.datetimes import _parse_date

from daemon115.links import Link, LinkError, btih_to_hex, is_info_hash, parse_magnet
from daemon115.rules import FeedEntry, format_size

__all__ = ["MAX_DIGITS", "NO_HEADERS", "FeedError", "ParsedFeed", "header_value", "is_http", "parse_feed", "read_feed"]

TORRENT_FILE_SIZE_FLOOR = 2 * 1024 * 1024
NO_HEADERS: Mapping[str, str] = MappingProxyType({})
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
MAX_DIGITS = 18  # a size or count longer than this is nonsense, and int() refuses past 4300 digits
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


def parse_feed(body: bytes, *, feed: str, url: str, headers: Mapping[str, str] = NO_HEADERS,
               max_size: int | None = None) -> list[FeedEntry]:
    """The entries of one feed document; ``url`` resolves relative links. Raises FeedError."""
    return list(read_feed(body, feed=feed, url=url, headers=headers, max_size=max_size).entries)


def read_feed(body: bytes, *, feed: str, url: str, headers: Mapping[str, str] = NO_HEADERS,
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
    encoding = _choose_encoding(body, header_value(headers, "content-type"))
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


def header_value(headers: Mapping[str, str], name: str) -> str | None:
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
    link = magnet.url if magnet else torrent_url or page or (guid if is_http(guid) else None) or None
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


def is_http(url: str | None) -> bool:
    return bool(url) and str(url)[:8].lower().startswith(("http://", "https://"))


def _is_torrent_enclosure(enclosure: Mapping[str, Any]) -> bool:
    href = str(enclosure.get("href") or "")
    kind = str(enclosure.get("type") or "").lower()
    return "bittorrent" in kind or href.lower().startswith("magnet:") or \
        (is_http(href) and href.lower().split("?", 1)[0].endswith(".torrent"))


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
    if enclosure is not None and is_http(str(enclosure["href"])):
        return str(enclosure["href"]).strip()
    for url in (page, guid):
        if is_http(url) and _TORRENTISH.search(url.split("://", 1)[1].partition("/")[2]):
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
    return int(text) if text.isdigit() and text.isascii() and len(text) <= MAX_DIGITS else None


def _published(raw: Mapping[str, Any]) -> float | None:
    parsed = raw.get("published_parsed") or raw.get("updated_parsed")
    return float(calendar.timegm(parsed)) if parsed else None
