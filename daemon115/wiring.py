"""Building the runtime objects from a Config: shared by the CLI commands and the daemon."""

from __future__ import annotations

from daemon115.api.client import Connection, Endpoints, connect
from daemon115.api.transport import Pacing
from daemon115.config import Config
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon115.logs import Redactor
from daemon115.ledger import Ledger
from daemon115.submitter import SubmitPolicy, Submitter


def connection_for(cfg: Config, redactor: Redactor | None = None, *, quick: bool = False,
                   observer: Callable[[str, int | None, bool], None] | None = None) -> Connection:
    """``quick``: one short try, for status displays that must not hang when 115 is away."""
    from daemon115 import __version__

    api = cfg.api
    pacing = Pacing(timeout=min(api.timeout, 5.0) if quick else api.timeout, min_interval=api.min_interval,
                    max_retries=0 if quick else api.max_retries)
    conn = connect(token_file=cfg.auth.token_file,
                   endpoints=Endpoints(api.base_url, api.passport_url, api.qrcode_url),
                   pacing=pacing,
                   daily_call_budget=api.daily_call_budget, refresh_ahead=cfg.auth.refresh_ahead,
                   user_agent=f"daemon115/{__version__}",
                   on_tokens=(lambda t: redactor.remember(t.access_token, t.refresh_token)) if redactor else None,
                   observer=observer)
    return conn


def submit_policy(cfg: Config) -> SubmitPolicy:
    s = cfg.submit
    return SubmitPolicy(batch_size=s.batch_size, batch_window=s.batch_window, max_attempts=s.max_attempts,
                        pause_probe=s.quota_check_every, unknown_grace=min(120.0, max(10.0, 2 * cfg.api.timeout)))


def submitter_for(cfg: Config, ledger: Ledger, conn: Connection, *, log: Any = None) -> Submitter:
    """The submitter with its folder resolver; the submit lock sits beside the ledger file."""
    from daemon115.api.folders import FolderResolver

    folders = FolderResolver(conn.client, ledger, create=cfg.submit.create_folders, log=log)
    return Submitter(ledger, conn.client, Path(str(cfg.ledger.path) + ".submit"), submit_policy(cfg),
                     folders=folders, log=log)
