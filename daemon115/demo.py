"""``daemon115 demo``: the sandbox and the real commands against it, so a new user sees the pipeline work."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TextIO

DEMO_LINKS = (
    "magnet:?xt=urn:btih:d2474e86c95b19b8bcfdb92bc12c9d44667cfa36&dn=Leaves+of+Grass+by+Walt+Whitman.epub",
    "magnet:?xt=urn:btih:C12FE1C06BBA254A9DC9F519B335AA7C1367A88A&dn=demo-episode-01",
    "ed2k://|file|jmule-0.5.0_B2.jar|2693693|E8D635CD815FB4AADB4FA59116809542|/",
)


def demo_config(base_url: str, state: Path) -> str:
    return f"""\
api:
  base_url: {base_url}
  passport_url: {base_url}
  qrcode_url: {base_url}
  min_interval: 0s
auth:
  token_file: {state / 'token.json'}
ledger:
  path: {state / 'ledger.sqlite3'}
submit:
  batch_window: 0s
"""


def run(out: TextIO) -> int:
    from daemon115 import cli
    from daemon115.api.sandbox import Sandbox

    with tempfile.TemporaryDirectory(prefix="daemon115-demo-") as tmp, Sandbox() as sandbox:
        state = Path(tmp)
        config = state / "config.yaml"
        config.write_text(demo_config(sandbox.url, state))
        sandbox.write_token_file(state / "token.json")
        out.write(f"sandbox (a simulated 115 Open API) at {sandbox.url}; config {config}\n")
        steps = [["check"], ["whoami"], ["quota"], ["add", *DEMO_LINKS], ["add", DEMO_LINKS[0]],
                 ["ledger", "list"], ["tasks"], ["auth", "status"]]
        for argv in steps:
            out.write(f"\n$ daemon115 {' '.join(_short(a) for a in argv)}\n")
            out.flush()
            code = cli.main(["-c", str(config), *argv], out=out)
            if code != 0:
                out.write(f"(exit {code})\n")
                return code
        out.write("\nTo use your own account: `daemon115 auth import --access-token ... --refresh-token ...`,\n"
                  "then copy config.example.yaml to ~/.config/daemon115/config.yaml and run `daemon115 check --online`.\n")
    return 0


def _short(arg: str) -> str:
    return arg if len(arg) < 48 else f"'{arg[:44]}…'"
