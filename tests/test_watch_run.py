"""Watch folders end to end: a real `daemon115 run` subprocess, real files, the sandbox as 115."""

from __future__ import annotations

import time
from pathlib import Path

from test_daemon import Run, accepted, wait_for

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-world"


def config(path: Path, sandbox, tmp_path: Path, watch_yaml: str) -> Path:
    path.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{tmp_path / 'token.json'}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_window: 200ms}}
logging: {{format: json}}
watch:
{watch_yaml}""")
    return path


def test_run_takes_every_kind_of_drop_and_explains_the_bad_ones(sandbox, tmp_path):
    sandbox.write_token_file(tmp_path / "token.json")
    inbox, polled = tmp_path / "inbox", tmp_path / "polled"
    (inbox / "anime").mkdir(parents=True)
    polled.mkdir()
    cfg = config(tmp_path / "c.yaml", sandbox, tmp_path, f"""\
  - {{path: '{inbox}', target: '100', recursive: true, subfolders: {{anime: '200'}}, settle: 200ms}}
  - {{path: '{polled}', target: '300', poll: true, poll_interval: 300ms, settle: 200ms}}
""")
    run = Run(cfg)
    try:
        time.sleep(1.0)
        many = "\ufeff# two links, CRLF line ends\r\nmagnet:?xt=urn:btih:" + "1" * 40 + "\r\n\r\n" \
               "magnet:?xt=urn:btih:" + "2" * 40 + "\r\n"
        (inbox / "many.magnet").write_text(many, newline="")
        (inbox / "anime" / "ep.magnet").write_text("magnet:?xt=urn:btih:" + "3" * 40 + "\n")
        torrent = FIXTURES / "torrents" / "leaves.webtorrent-fixtures.torrent"
        (polled / "leaves.torrent").write_bytes(torrent.read_bytes())
        (inbox / "junk.magnet").write_bytes(b"\x00\xff\xfe binary junk")
        (inbox / "half.torrent-link").write_text(
            "ed2k://|file|jmule-0.5.0_B2.jar|2693693|E8D635CD815FB4AADB4FA59116809542|/\nthunder://nope\n")
        with open(inbox / "slow.magnet", "w") as slow:  # a slow writer: not taken before it is complete
            slow.write("magnet:?xt=urn:btih:")
            slow.flush()
            time.sleep(1.2)
            assert not (inbox / ".done" / "slow.magnet").exists()
            slow.write("4" * 40 + "\n")
        wait_for(lambda: len(accepted(sandbox)) == 6, timeout=20, what="six links at the sandbox")
        wait_for(lambda: (inbox / ".failed" / "junk.magnet.error").exists(), what="the junk file explained")
        targets = {t["info_hash"]: t["wp_path_id"] for t in sandbox.tasks()}
        assert targets["1" * 40] == targets["2" * 40] == targets["4" * 40] == "100"
        assert targets["3" * 40] == "200"  # the subfolder's target
        assert targets["d2474e86c95b19b8bcfdb92bc12c9d44667cfa36"] == "300"  # polled, from the .torrent
        assert (inbox / ".done" / "half.torrent-link").exists()
        assert "thunder" in (inbox / ".done" / "half.torrent-link.error").read_text()
        assert (polled / ".done" / "leaves.torrent").exists()
        assert sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")) == ["anime"]
    finally:
        assert run.stop() == 0
