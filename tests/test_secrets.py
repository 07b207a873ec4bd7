"""Tokens never reach output: the suite-wide check in conftest.py, and the places most likely to leak them."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from daemon115 import cli
from daemon115.api.auth import read_tokens
from daemon115.api.sandbox import Fault
from daemon115.logs import Redactor, configure


def test_the_suite_wide_leak_check_catches_a_printed_token(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile("""
        def test_leaks(sandbox):
            print(sandbox.grant().access_token)
        def test_clean(sandbox):
            print(len(sandbox.grant().access_token))
    """)
    result = pytester.runpytest("-p", "no:xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*token values leaked*"])


def config_for(sandbox, tmp_path, token_file):
    path = tmp_path / "config.yaml"
    path.write_text(f"api: {{base_url: '{sandbox.url}', passport_url: '{sandbox.url}', min_interval: 0s}}\n"
                    f"auth: {{token_file: '{token_file}'}}\nledger: {{path: '{tmp_path / 'l.sqlite3'}'}}\n")
    return path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_no_command_prints_a_token_even_when_auth_fails(sandbox, tmp_path, token_file):
    config = str(config_for(sandbox, tmp_path, token_file))
    tokens = read_tokens(token_file)
    outputs = [run("-c", config, "auth", "status"), run("-c", config, "auth", "status", "--json"),
               run("-c", config, "auth", "refresh"), run("-c", config, "whoami", "--json")]
    sandbox.revoke(read_tokens(token_file).refresh_token)
    sandbox.inject(Fault("expire_access"))
    outputs.append(run("-c", config, "quota"))
    assert outputs[-1][0] == 3 and "daemon115 auth import" in outputs[-1][2]
    fresh = read_tokens(token_file)
    for _, out, err in outputs:
        for secret in (tokens.access_token, tokens.refresh_token, fresh.access_token, fresh.refresh_token):
            assert secret not in out and secret not in err


def test_log_lines_redact_secret_keys_bearer_headers_and_known_values():
    stream = io.StringIO()
    redactor = configure("debug", "json", stream=stream)
    redactor.remember("at_0123456789abcdef")
    from daemon115.logs import get_logger

    log = get_logger("t")
    log.info("request", authorization="Bearer at_0123456789abcdef", refresh_token="rt_x" * 4,
             headers={"Cookie": "uid=1; passkey=2", "Accept": "*/*"},
             message="retrying with Bearer zzz_secret_value and at_0123456789abcdef")
    line = json.loads(stream.getvalue())
    assert line["authorization"] == line["refresh_token"] == "<redacted>"
    assert line["headers"] == {"Cookie": "<redacted>", "Accept": "*/*"}
    assert "zzz_secret_value" not in line["message"] and "at_0123456789abcdef" not in line["message"]
    assert line["event"] == "request"


@pytest.mark.parametrize("value", ["short", ""])
def test_redactor_ignores_values_too_short_to_be_secrets(value):
    assert Redactor([value]).scrub("a short text") == "a short text"


def test_token_reprs_hide_values(sandbox):
    from daemon115.api.auth import Tokens
    from daemon115.api.models import Grant

    pair = sandbox.grant()
    for value in (Tokens(pair.access_token, pair.refresh_token, 0), Grant(pair.access_token, pair.refresh_token, 1),
                  pair):
        assert pair.access_token not in repr(value) and pair.refresh_token not in repr(value)
    logging.getLogger("x").info("%r", pair)


def test_the_redactor_knows_the_start_up_pair_before_any_refresh(sandbox, tmp_path, token_file):
    from daemon115.config import load
    from daemon115.wiring import connection_for

    redactor = Redactor()
    conn = connection_for(load(config_for(sandbox, tmp_path, token_file)), redactor)
    conn.client.user_info()
    assert conn.client.tokens.refreshes == 0
    pair = read_tokens(token_file)
    scrubbed = redactor.scrub(f"an odd message quoting {pair.access_token} and {pair.refresh_token}")
    assert pair.access_token not in scrubbed and pair.refresh_token not in scrubbed


def test_the_store_tells_of_a_refreshed_pair_before_it_reaches_the_token_file(sandbox, token_file):
    from daemon115.api.auth import TokenStore
    from daemon115.api.models import Grant

    start, new = read_tokens(token_file), sandbox.grant()
    heard: list[tuple[str, str]] = []  # (the pair's access token, the access token on disk at that moment)
    store = TokenStore(token_file, lambda _: Grant(new.access_token, new.refresh_token, 7200),
                       on_tokens=lambda t: heard.append((t.access_token, read_tokens(token_file).access_token)))
    store.refresh()
    assert heard == [(start.access_token, start.access_token), (new.access_token, start.access_token)]
    assert read_tokens(token_file).access_token == new.access_token


def test_config_secrets_are_cut_from_any_log_line_even_outside_a_query_string(tmp_path):
    from daemon115.config import loads, secret_values

    cfg = loads("feeds:\n"
                "  - {name: t, url: 'https://tracker.example/rss/5f4dcc3b5aa765d61d8327deb882cf99', accept_all: true,\n"
                "     cookies: {uid: '12345', pass: 'cookie-secret-value'}, headers: {X-Api-Key: 'header-secret-123'}}\n"
                "notify:\n"
                "  - {type: telegram, bot_token: '123456:telegram-secret', chat_id: '42'}\n"
                "  - {type: webhook, url: 'https://hooks.example/services/T000/B000/hook-secret-path'}\n")
    stream = io.StringIO()
    redactor = configure("info", "json", stream=stream)
    redactor.remember(*secret_values(cfg))
    from daemon115.logs import get_logger

    get_logger("t").warning("careless", text="fetching https://tracker.example/rss/5f4dcc3b5aa765d61d8327deb882cf99",
                            error=RuntimeError("cookie-secret-value rejected; header-secret-123 too"),
                            notes=["123456:telegram-secret", "https://hooks.example/services/T000/B000/hook-secret-path"])
    text = stream.getvalue()
    for secret in ("5f4dcc3b5aa765d61d8327deb882cf99", "cookie-secret-value", "header-secret-123",
                   "telegram-secret", "hook-secret-path"):
        assert secret not in text
    assert json.loads(text)["event"] == "careless" and "rejected" in text


def test_objects_in_log_fields_are_rendered_as_their_scrubbed_text():
    stream = io.StringIO()
    redactor = configure("info", "json", stream=stream)
    redactor.remember("at_0123456789abcdef")
    from daemon115.logs import get_logger

    get_logger("t").info("odd", error=ValueError("token at_0123456789abcdef refused"), path=Path("/x"), n=3, ok=True)
    line = json.loads(stream.getvalue())
    assert line["error"] == "token <redacted> refused" and line["path"] == "/x"
    assert (line["n"], line["ok"]) == (3, True)
