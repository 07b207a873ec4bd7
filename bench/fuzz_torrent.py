"""Fuzz the .torrent reader and the bencode decoder under it with atheris.

    .venv/bin/python bench/fuzz_torrent.py [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python bench/fuzz_torrent.py -max_total_time=120

Without a corpus directory a temporary one is used, seeded with the real-world .torrent fixtures (v1, v2, hybrid,
private, corrupt, a JSON error page saved as .torrent). Defaults (each overridable): ``-timeout=10
-rss_limit_mb=2048 -artifact_prefix=tests/fuzz/crashes/torrent-``, so a crash lands where
tests/fuzz/test_fuzz_parsers.py replays it.

A crash is any of: an exception other than LinkError from :func:`parse_torrent` (or from its ``to_link()``), other
than BencodeError from :func:`bdecode` / :func:`bdecode_dict_spans`; a value that re-encodes and decodes to
something else; an input that takes longer than ``-timeout`` seconds or more than ``-rss_limit_mb``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fuzz_links import libfuzzer_args  # noqa: E402

from daemon115.bencode import BencodeError, bdecode, bdecode_dict_spans, bencode  # noqa: E402
from daemon115.links import LinkError, parse_torrent  # noqa: E402

TARGET = "torrent"
FIXTURES = REPO.parent / "shared" / "fixtures" / "real-world" / "torrents"
TOKENS = [b"d4:info", b"4:name", b"6:pieces20:", b"6:lengthi", b"5:filesl", b"12:meta versioni2e", b"9:file treed",
          b"0:d6:lengthi", b"8:announce", b"13:announce-listl", b"7:privatei1e", b"10:name.utf-8", b"i-0e", b"i03e",
          b"ee"]


def one_input(data: bytes) -> None:
    """Raise (anything but the documented errors) when ``data`` shows a bug."""
    try:
        parse_torrent(data).to_link()
    except LinkError:
        pass
    try:
        value = bdecode(data)
    except BencodeError:
        pass
    else:
        if bdecode(bencode(value)) != value:
            raise AssertionError("a decoded value does not survive encoding and decoding again")
    try:
        bdecode_dict_spans(data)
    except BencodeError:
        pass


def seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.torrent"))]


def main() -> None:
    import atheris

    os.makedirs(REPO / "tests" / "fuzz" / "crashes", exist_ok=True)
    atheris.instrument_all()
    atheris.Setup(libfuzzer_args(sys.argv, TARGET, seeds(), TOKENS), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
