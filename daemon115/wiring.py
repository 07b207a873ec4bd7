"""Building the runtime objects from a Config: shared by the CLI commands and the daemon."""

from __future__ import annotations

from daemon115.api.client import Connection, Endpoints, connect
from daemon115.api.transport import Pacing
from daemon115.config import Config
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon115.logs import Redactor
from daemon115.submitter import SubmitPolicy


def connection_for(cfg: Config, redactor: Redactor | None = None) -> Connection:
    from daemon115 import __version__

    api = cfg.api
    conn = connect(token_file=cfg.auth.token_file,
                   endpoints=Endpoints(api.base_url, api.passport_url, api.qrcode_url),
                   pacing=Pacing(timeout=api.timeout, min_interval=api.min_interval, max_retries=api.max_retries),
                   daily_call_budget=api.daily_call_budget, refresh_ahead=cfg.auth.refresh_ahead,
                   user_agent=f"daemon115/{__version__}",
                   on_refresh=(lambda t: redactor.remember(t.access_token, t.refresh_token)) if redactor else None)
    return conn


def submit_policy(cfg: Config) -> SubmitPolicy:
    s = cfg.submit
    return SubmitPolicy(batch_size=s.batch_size, batch_window=s.batch_window, max_attempts=s.max_attempts,
                        pause_probe=s.quota_check_every)
