"""A feed's bytes -> its entries: ids, recovery of ill-formed XML, encodings, the two readers, refusals.

The tests that read every real-world fixture against its expected entries live in test_feeds.py, beside the
expectations table they share with the HTTP tests.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from daemon115.sources.feed_entries import FeedError, parse_feed, read_feed

FEEDS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world" / "feeds"


def test_entry_ids_are_the_guid_else_the_link() -> None:
    showrss = parse_feed((FEEDS / "showrss_info.sonarr.xml").read_bytes(), feed="s", url="http://x/")
    assert showrss[0].entry_id == "9bf12f5ecc9d61aec05b28e605784ee7"
    torrentday = parse_feed((FEEDS / "torrentday_minimal_link_only.sonarr.xml").read_bytes(), feed="t",
                            url="http://x/")
    assert torrentday[0].entry_id == torrentday[0].link
    prowlarr = parse_feed((FEEDS / "torznab_prowlarr_duplicate_item.autobrr.xml").read_bytes(), feed="p",
                          url="http://x/")
    assert [e.entry_id for e in prowlarr] == ["Mock-74709", "Mock-71862", "Mock-71862"]


def test_ill_formed_fixtures_that_recover_entries_carry_a_warning() -> None:
    parsed = read_feed((FEEDS / "unescaped_ampersands.flexget.xml").read_bytes(), feed="n", url="http://x/")
    assert parsed.warnings == ("invalid XML (line 16, column 45: not well-formed (invalid token)); 5 entries "
                               "recovered by the lenient parser",)
    assert read_feed((FEEDS / "nyaa_si_2021.sonarr.xml").read_bytes(), feed="n", url="http://x/").warnings == ()


def test_declared_and_undeclared_legacy_encodings_are_decoded() -> None:
    assert read_feed((FEEDS / "doki_iso8859-1.sonarr.xml").read_bytes(), feed="d", url="http://x/").encoding \
        == "iso8859-1"
    assert read_feed((FEEDS / "fp_encoding_euc-kr-item.xml").read_bytes(), feed="d", url="http://x/").encoding \
        == "euc_kr"
    assert read_feed((FEEDS / "fp_illformed_chardet_shiftjis.xml").read_bytes(), feed="d", url="http://x/") \
        .encoding == "shift_jis"
    assert read_feed((FEEDS / "fp_encoding_utf-16le-bom.xml").read_bytes(), feed="d", url="http://x/").encoding \
        == "utf-16-le"


ATOM = (b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><entry>'
        b'<title type="html">A &amp;amp; B</title><id>urn:x:1</id><link href="/view/1"/>'
        b'<link rel="enclosure" type="application/x-bittorrent" href="/dl/1.torrent" length="3000000"/>'
        b"<updated>2024-01-02T03:04:05Z</updated><summary>1.5 GiB, 12 seeders</summary></entry><entry>"
        b"<id>tag:x,2024:2</id><title>Two</title><published>2024-01-03T00:00:00+08:00</published>"
        b'<content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><a href="magnet:?xt=urn:btih:'
        + b"c" * 40 + b'">magnet</a></div></content></entry></feed>')
RDF = (b'<?xml version="1.0"?><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
       b'xmlns="http://purl.org/rss/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"><channel rdf:about="x">'
       b'<title>c</title></channel><item rdf:about="http://e/1"><title>T1</title><link>http://e/1.torrent</link>'
       b"<dc:date>2024-01-02T03:04:05Z</dc:date></item></rdf:RDF>")
GUIDS = (b'<rss version="2.0"><channel><item><title>G</title><guid>abc123</guid><enclosure url="http://e/x.torrent"'
         b' type="application/x-bittorrent" length="5000000"/></item><item><title>H</title>'
         b"<guid>http://e/view/2</guid><description>Size: 2.5 GB</description></item></channel></rss>")


def test_elementtree_and_feedparser_read_atom_rss10_and_guid_only_items_alike() -> None:
    for body in (ATOM, RDF, GUIDS):
        assert read_feed(body, feed="f", url="http://h/feed") == \
            read_feed(body, feed="f", url="http://h/feed", reader="feedparser")
    atom = parse_feed(ATOM, feed="f", url="http://h/feed")
    assert [(e.entry_id, e.title, e.link, e.size, e.seeders) for e in atom] == [
        ("urn:x:1", "A &amp; B", "http://h/dl/1.torrent", 3000000, 12),
        ("tag:x,2024:2", "Two", "magnet:?xt=urn:btih:" + "c" * 40, None, None)]
    assert atom[1].published == calendar.timegm((2024, 1, 2, 16, 0, 0))
    assert parse_feed(RDF, feed="f", url="http://h/")[0].published == calendar.timegm((2024, 1, 2, 3, 4, 5))
    guids = parse_feed(GUIDS, feed="f", url="http://h/feed")
    assert [(e.entry_id, e.link) for e in guids] == [("abc123", "http://e/x.torrent"),
                                                      ("http://e/view/2", "http://e/view/2")]


def test_an_external_dtd_without_entities_is_read() -> None:
    body = (b'<?xml version="1.0"?><!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
            b'"http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss version="0.91"><channel><title>t</title>'
            b"<item><title>Old</title><link>http://example.com/a.torrent</link></item></channel></rss>")
    assert [e.title for e in parse_feed(body, feed="x", url="http://x/")] == ["Old"]


def test_html_pages_empty_bodies_and_non_feeds_are_clear_errors() -> None:
    cases = {
        b"<!DOCTYPE html>\n<html><body><form action=/login><input name=passkey></form></body></html>":
            "the server sent an HTML page, not a feed (a login or error page?)",
        b"<html><body>Error 500</body></html>": "the server sent an HTML page, not a feed (a login or error page?)",
        b"   \n": "the response is empty",
        b'{"status":404}': "not an RSS or Atom feed",
    }
    for body, message in cases.items():
        with pytest.raises(FeedError) as caught:
            parse_feed(body, feed="x", url="http://x/")
        assert str(caught.value).startswith(message)


def test_a_body_above_max_size_is_refused() -> None:
    with pytest.raises(FeedError, match="larger than max_size 1 KB"):
        parse_feed(b"<rss>" + b" " * 2000 + b"</rss>", feed="x", url="http://x/", max_size=1000)


def test_the_xml_declaration_then_the_http_charset_decide_the_encoding() -> None:
    latin = '<?xml version="1.0" encoding="iso-8859-1"?><rss version="2.0"><channel><item><title>Café</title>' \
            "<link>http://e/1.torrent</link></item></channel></rss>"
    assert parse_feed(latin.encode("latin-1"), feed="f", url="http://h/",
                      headers={"Content-Type": "text/xml; charset=utf-8"})[0].title == "Café"
    cyrillic = '<rss version="2.0"><channel><item><title>Тест</title><link>http://e/1.torrent</link></item>' \
               "</channel></rss>"
    assert parse_feed(cyrillic.encode("cp1251"), feed="f", url="http://h/",
                      headers={"content-type": "application/rss+xml; charset=windows-1251"})[0].title == "Тест"
