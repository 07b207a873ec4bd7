"""Fuzz the link parsers with atheris: one line of outside text, and a whole dropped .magnet/.torrent-link file.

    .venv/bin/python bench/fuzz_links.py [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python bench/fuzz_links.py -max_total_time=120

Without a corpus directory a temporary one is used, seeded with every magnet and ed2k vector of the real-world
fixtures. Defaults (each overridable): ``-timeout=10 -rss_limit_mb=2048
-artifact_prefix=tests/fuzz/crashes/links-``, so a crash lands where tests/fuzz/test_fuzz_parsers.py replays it.

A crash is any of: an exception other than LinkError from :func:`parse_link`, or other than DropError from
decoding and splitting a drop file; a Link whose canonical ``url`` does not parse back to the same url and key (the
ledger keys on it); an input that takes longer than ``-timeout`` seconds or more than ``-rss_limit_mb``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon115.links import LinkError, parse_link  # noqa: E402
from daemon115.sources.watch import DropError, decode_text, parse_lines  # noqa: E402

TARGET = "links"
FIXTURES = REPO.parent / "shared" / "fixtures" / "real-world" / "magnets"
TOKENS = [b"magnet:?", b"xt=urn:btih:", b"xt=urn:btmh:1220", b"&tr=", b"&dn=", b"&xl=", b"%", b"ed2k://|file|",
          b"|h=", b"|p=", b"|/", b"|sources,", b"http://", b"https://", b"ftp://", b"[::1]", b":65536", b"\r\n",
          b"\xef\xbb\xbf"]


def one_input(data: bytes) -> None:
    """Raise (anything but the documented errors) when ``data`` shows a bug."""
    try:
        link = parse_link(data.decode("utf-8", "replace"))
    except LinkError:
        pass
    else:
        again = parse_link(link.url)
        if (again.url, again.key) != (link.url, link.key):
            raise AssertionError(f"canonical url is not stable: {link.url!r} -> {again.url!r}")
    for kind in ("magnet", "torrent-link"):
        try:
            parse_lines(decode_text(data), kind)
        except DropError:
            pass


def seeds() -> list[bytes]:
    found = []
    for name, field in (("magnet_vectors.json", "uri"), ("ed2k_vectors.json", "link")):
        doc = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
        found += [v[field].encode() for v in doc["vectors"] if isinstance(v.get(field), str)]
    return found + [b"http://Example.COM:80/a b?x=1#f", b"ftp://h/x", b"# comment\r\nmagnet:?xt=urn:btih:" + b"a" * 40]


def libfuzzer_args(argv: list[str], target: str, seed_inputs: list[bytes], tokens: Sequence[bytes] = ()) -> list[str]:
    """argv with this project's defaults added (shared by every bench/fuzz_*.py): a temporary seeded corpus when
    none is given, and ``tokens`` as a libFuzzer dictionary when no ``-dict=`` is."""
    options = [a for a in argv[1:] if a.startswith("-")]
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    scratch = Path(tempfile.mkdtemp(prefix=f"daemon115-fuzz-{target}-"))
    defaults = {"-timeout=": "10", "-rss_limit_mb=": "2048",
                "-artifact_prefix=": str(REPO / "tests" / "fuzz" / "crashes" / f"{target}-")}
    if tokens:
        lines = ("\"" + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in token)
                 + "\"\n" for token in tokens)
        (scratch / "tokens.dict").write_text("".join(lines))
        defaults["-dict="] = str(scratch / "tokens.dict")
    options += [key + value for key, value in defaults.items() if not any(o.startswith(key) for o in options)]
    if not corpora:
        (scratch / "corpus").mkdir()
        for number, seed in enumerate(seed_inputs):
            (scratch / "corpus" / f"seed-{number}").write_bytes(seed)
        corpora = [str(scratch / "corpus")]
        print(f"corpus: {corpora[0]} ({len(seed_inputs)} seeds)", file=sys.stderr)
    return [argv[0], *options, *corpora]


def main() -> None:
    import atheris

    os.makedirs(REPO / "tests" / "fuzz" / "crashes", exist_ok=True)
    atheris.instrument_all()
    atheris.Setup(libfuzzer_args(sys.argv, TARGET, seeds(), TOKENS), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
