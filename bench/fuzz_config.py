"""Fuzz the config loader with atheris: YAML text through ``config.loads``, and the duration and size readers.

    .venv/bin/python bench/fuzz_config.py [libFuzzer options] [CORPUS_DIR ...]
    .venv/bin/python bench/fuzz_config.py -max_total_time=120

Without a corpus directory a temporary one is used, seeded with a full valid config, the suite's broken configs
and a few YAML oddities (anchors, merges, tags, ${VAR}). Defaults (each overridable): ``-timeout=10
-rss_limit_mb=2048 -artifact_prefix=tests/fuzz/crashes/config-``, so a crash lands where
tests/fuzz/test_fuzz_parsers.py replays it.

A crash is any of: an exception other than ConfigError from :func:`loads` (or other than ValueError from
:func:`parse_duration` / :func:`parse_size` on the same text); an input that takes longer than ``-timeout``
seconds or more than ``-rss_limit_mb``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fuzz_links import libfuzzer_args  # noqa: E402

from daemon115.config import ConfigError, loads, parse_duration, parse_size  # noqa: E402

TARGET = "config"
ENV = {"HOME": "/home/fuzz", "PASSKEY": "0123456789abcdef"}
FULL = """\
api: {base_url: 'https://proapi.115.com', timeout: 30s, min_interval: 500ms, max_retries: 4, daily_call_budget: 5000}
auth: {token_file: ~/.local/state/daemon115/token.json, refresh_ahead: 10m}
ledger: {path: ledger.sqlite3, keep_details: 180d}
submit: {batch_size: 100, batch_window: 2s, default_target: /Downloads, max_attempts: 10, create_folders: true}
watch:
  - {path: /srv/drop, target: '0', recursive: true, subfolders: {tv: /TV, '1080p': '123'}, settle: 0.5s}
feeds:
  - name: nyaa
    url: 'https://nyaa.si/?page=rss&passkey=${PASSKEY}'
    interval: 15m
    headers: {X-Api-Key: '${PASSKEY}'}
    cookies: {uid: 1}
    max_size: 10MB
    rules:
      - {name: show, include: ['(?i)show.*1080p'], exclude: [x265], min_size: 100MiB, max_size: 4GB, episodes: true}
cleanup:
  - {name: failed, every: 1h, delete: {status: [failed], older_than: 2d, retry_failed: 1}}
  - {name: wipe, clear: all+files, confirm_delete_files: true}
logging: {level: debug, format: json}
status: {listen: '127.0.0.1:8115'}
notify:
  - {type: webhook, url: 'https://hooks.example/x', events: [failed]}
  - {type: telegram, bot_token: '123:abc', chat_id: -100123}
  - {type: bark, device_key: abcdef}
"""
ODDITIES = [
    "base: &b {interval: 5m}\nfeeds: [{<<: *b, name: a, url: 'https://e.org/'}]\n",
    "api: !!python/object/apply:os.system ['true']\n",
    "feeds: [{name: a, url: 'https://e.org/${UNSET}', interval: '$${literal}'}]\n",
    "submit: {batch_size: 1e400}\nledger: {keep_details: .5d}\n",
    "watch: [{path: '', subfolders: {'../x': 1}}]\n",
    "\ufeff%YAML 1.1\n---\nlogging: {level: INFO}\n...\n",
]
TOKENS = [b"feeds:", b"watch:", b"cleanup:", b"notify:", b"rules:", b"&a", b"*a", b"<<: *a", b"!!python/object:",
          b"${HOME}", b"$${", b"1e400", b".inf", b"-.inf", b".nan", b"0x1f", b"[[[[", b"{{{{", b"interval:",
          b"max_size:", b"include:", b"subfolders:", b"listen:", b"~/", b"%YAML 1.1", b"---", b"? "]


def one_input(data: bytes) -> None:
    """Raise (anything but the documented errors) when ``data`` shows a bug."""
    text = data.decode("utf-8", "replace")
    try:
        loads(text, env=ENV)
    except ConfigError:
        pass
    for reader in (parse_duration, parse_size):
        try:
            reader(text)
        except ValueError:
            pass


def seeds() -> list[bytes]:
    broken = [path.read_bytes() for path in sorted((REPO / "tests" / "configs").glob("*.yaml"))]
    return [FULL.encode(), *broken, *(text.encode() for text in ODDITIES), b"30s", b"1h30m", b"1.5 GiB"]


def main() -> None:
    import atheris

    os.makedirs(REPO / "tests" / "fuzz" / "crashes", exist_ok=True)
    atheris.instrument_all()
    atheris.Setup(libfuzzer_args(sys.argv, TARGET, seeds(), TOKENS), one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
