"""Fuzz the feed reader with atheris: a response body through both readers (ElementTree and feedparser).

    .venv/bin/python bench/fuzz_feed.py [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python bench/fuzz_feed.py -max_total_time=120 -max_len=65536

Without a corpus directory a temporary one is used, seeded with every real-world feed fixture (RSS 2.0, RSS 1.0,
Atom, torznab, ill-formed, legacy encodings). Defaults (each overridable): ``-timeout=10 -rss_limit_mb=2048
-artifact_prefix=tests/fuzz/crashes/feed-``, so a crash lands where tests/fuzz/test_fuzz_parsers.py replays it.

A crash is any of: an exception other than FeedError from :func:`read_feed` with either reader, with or without
an HTTP charset; an entry whose fields are not of their documented types; an input that takes longer than
``-timeout`` seconds or more than ``-rss_limit_mb``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fuzz_links import libfuzzer_args  # noqa: E402

from daemon115.rules import FeedEntry  # noqa: E402
from daemon115.sources.feed_entries import FeedError, read_feed  # noqa: E402

TARGET = "feed"
FIXTURES = REPO.parent / "shared" / "fixtures" / "real-world" / "feeds"
READS = (("auto", {}), ("feedparser", {}), ("auto", {"Content-Type": "application/rss+xml; charset=windows-1252"}))
TOKENS = [b'<rss version="2.0"><channel><item>', b"</item></channel></rss>",
          b'<feed xmlns="http://www.w3.org/2005/Atom">', b"<entry>", b'<enclosure url="http://h/a.torrent" length="',
          b'type="application/x-bittorrent"', b'<torznab:attr name="size" value="',
          b'xmlns:torznab="http://torznab.com/schemas/2015/feed"', b"<description>", b'<content type="xhtml">',
          b"<size>", b"<seeds>", b"<infoHash>", b"<magnetURI>", b"magnet:?xt=urn:btih:", b"99999999999999999999",
          b" GiB", b" seeders", b"<pubDate>", b"<![CDATA[", b"&amp;", b'<?xml version="1.0" encoding="', b"<!DOCTYPE",
          b"<!ENTITY", b"\xef\xbb\xbf", b"\xff\xfe"]


def one_input(data: bytes) -> None:
    """Raise (anything but the documented errors) when ``data`` shows a bug."""
    for reader, headers in READS:
        try:
            parsed = read_feed(data, feed="fuzz", url="http://feeds.example/rss?passkey=x", headers=headers,
                               reader=reader)
        except FeedError:
            continue
        for entry in parsed.entries:
            check_entry(entry)


def check_entry(entry: FeedEntry) -> None:
    for name in ("link", "info_hash", "magnet", "torrent_url"):
        value = getattr(entry, name)
        if value is not None and not isinstance(value, str):
            raise AssertionError(f"entry.{name} is {type(value).__name__}")
    for name in ("size", "seeders"):
        value = getattr(entry, name)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise AssertionError(f"entry.{name} is {value!r}")
    if entry.published is not None and not isinstance(entry.published, float):
        raise AssertionError(f"entry.published is {entry.published!r}")
    if not isinstance(entry.title, str) or not isinstance(entry.entry_id, str):
        raise AssertionError("entry title or id is not text")


def seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.xml"))]


def main() -> None:
    import atheris

    os.makedirs(REPO / "tests" / "fuzz" / "crashes", exist_ok=True)
    atheris.instrument_all()
    atheris.Setup(libfuzzer_args(sys.argv, TARGET, seeds(), TOKENS), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
