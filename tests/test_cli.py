"""The command line as a user meets it: exit codes, key paths, --json documents, the ledger commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEX = "d2474e86c95b19b8bcfdb92bc12c9d44667cfa36"


def daemon115(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DAEMON115_CONFIG": "/nonexistent/none.yaml", **(env or {})}
    return subprocess.run([sys.executable, "-m", "daemon115", *argv], capture_output=True, text=True, env=full_env,
                          timeout=60, input=stdin)


@pytest.fixture
def config(sandbox, token_file, tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{token_file}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
submit: {{batch_window: 0s, default_target: "42"}}
""")
    return path


def test_check_passes_the_example_config():
    result = daemon115("-c", str(REPO / "config.example.yaml"), "check")
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout


BROKEN = [
    ("feeds:\n  - {name: a, url: 'https://x/r', rules: [{include: ['ok', 'x(']}]}\n", "feeds[0].rules[0].include[1]"),
    ("submit:\n  batch_size: 200\n", "submit.batch_size"),
    ("submit:\n  batch_window: soon\n", "submit.batch_window"),
    ("api:\n  timeoutt: 3s\n", "api.timeoutt"),
    ("feeds:\n  - {url: 'https://x/r'}\n", "feeds[0].name"),
    ("feeds:\n  - {name: a}\n", "feeds[0].url"),
    ("feeds:\n  - {name: a, url: 'https://x/1'}\n  - {name: a, url: 'https://x/2'}\n", "feeds[1].name"),
    ("watch:\n  - {target: '0'}\n", "watch[0].path"),
    ("watch:\n  - {path: /srv/d, target: 'Downloads'}\n", "watch[0].target"),
    ("cleanup:\n  - {name: c, clear: finished}\n", "cleanup[0].clear"),
    ("cleanup:\n  - {name: c, clear: all+files}\n", "cleanup[0]"),
    ("cleanup:\n  - {name: d, delete: {status: [failed], with_files: true}}\n", "cleanup[0]"),
    ("feeds:\n  - {name: a, url: 'https://x/r', rules: [{min_size: 2GB, max_size: 1GB}]}\n",
     "feeds[0].rules[0].min_size"),
    ("feeds:\n  - {name: a, url: 'https://x/r', rules: [{min_size: huge}]}\n", "feeds[0].rules[0].min_size"),
    ("auth:\n  token_file: ${DAEMON115_TEST_UNSET_VAR}/t.json\n", "auth.token_file"),
    ("logging:\n  level: loud\n", "logging.level"),
    ("api:\n  base_url: ftp://proapi.115.com\n", "api.base_url"),
]


@pytest.mark.parametrize("text, path", BROKEN, ids=[p for _, p in BROKEN])
def test_check_rejects_a_broken_config_with_exit_2_and_the_key_path(tmp_path, text, path):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    result = daemon115("-c", str(config), "check")
    assert result.returncode == 2
    assert any(line.startswith(f"{path}:") for line in result.stderr.splitlines()), result.stderr


def test_check_names_the_line_and_column_of_a_yaml_syntax_error(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("submit:\n  batch_size: [1, 2\n")
    result = daemon115("-c", str(config), "check")
    assert result.returncode == 2 and "line 3" in result.stderr and "column" in result.stderr


def test_check_reports_every_problem_at_once():
    result = daemon115("-c", str(REPO / "tests" / "configs" / "many-problems.yaml"), "check")
    expected = [line.split("expect: ")[1] for line in
                (REPO / "tests" / "configs" / "many-problems.yaml").read_text().splitlines() if "expect: " in line]
    assert result.returncode == 2
    for path in expected:
        assert any(line.startswith(f"{path}:") for line in result.stderr.splitlines()), (path, result.stderr)


def test_check_without_any_config_file_is_exit_2():
    assert daemon115("check").returncode == 2


def test_bad_command_line_is_exit_2():
    assert daemon115("frobnicate").returncode == 2
    assert daemon115("add").returncode == 2


def test_no_token_file_is_exit_3_naming_auth_import(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"auth: {{token_file: '{tmp_path / 'none.json'}'}}\n")
    result = daemon115("-c", str(config), "whoami")
    assert result.returncode == 3 and "daemon115 auth import" in result.stderr


def test_unreachable_115_is_exit_1(tmp_path, token_file):
    config = tmp_path / "c.yaml"
    config.write_text(f"api: {{base_url: 'http://127.0.0.1:9', passport_url: 'http://127.0.0.1:9', max_retries: 0,"
                      f" min_interval: 0s}}\nauth: {{token_file: '{token_file}'}}\n")
    result = daemon115("-c", str(config), "quota")
    assert result.returncode == 1 and "error:" in result.stderr


@pytest.mark.parametrize("command, keys", [
    ("whoami", {"user_id", "user_name", "vip", "space"}),
    ("quota", {"count", "used", "surplus", "packages"}),
])
def test_json_documents_carry_the_interface_keys(config, command, keys):
    result = daemon115("-c", str(config), command, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert keys <= set(doc)


def test_whoami_json_shapes(config):
    doc = json.loads(daemon115("-c", str(config), "whoami", "--json").stdout)
    assert set(doc["vip"]) >= {"level_name", "expire"} and set(doc["space"]) >= {"total", "remain", "used"}
    assert isinstance(doc["user_id"], str)


def test_tasks_json_lists_every_task_with_the_interface_fields(config, sandbox):
    assert daemon115("-c", str(config), "add", *[f"magnet:?xt=urn:btih:{i:040x}" for i in range(35)]).returncode == 0
    doc = json.loads(daemon115("-c", str(config), "tasks", "--json").stdout)
    assert len(doc) == 35
    assert {"info_hash", "name", "status", "percent", "size", "add_time", "url", "file_id",
            "wp_path_id"} <= set(doc[0])
    assert doc[0]["wp_path_id"] == "42"  # submit.default_target


def test_human_tables(config):
    daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}&dn=Leaves")
    whoami = daemon115("-c", str(config), "whoami").stdout
    assert "年费VIP" in whoami and "TiB" in whoami
    tasks = daemon115("-c", str(config), "tasks").stdout
    assert HEX in tasks and "Leaves" in tasks and "1 tasks" in tasks


def test_add_queues_submits_and_dedups(config, sandbox):
    result = daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}", "--target", "7")
    assert result.returncode == 0 and f"queued: {HEX}" in result.stdout
    again = daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX.upper()}")
    assert again.returncode == 0 and "already known (submitted)" in again.stdout
    assert sum(sandbox.stats()["accepted_hashes"].values()) == 1
    forced = daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}", "--force")
    assert forced.returncode == 0 and "already in the cloud" in forced.stdout  # 115 said 10008: still a success


def test_add_rejects_a_bad_link_with_its_reason_and_exit_2(config):
    result = daemon115("-c", str(config), "add", "thunder://abc", f"magnet:?xt=urn:btih:{HEX}")
    assert result.returncode == 2 and "thunder" in result.stderr
    assert f"queued: {HEX}" in result.stdout  # the good one is not lost


def test_add_while_115_is_down_keeps_the_link_queued_and_exits_1(config, sandbox, tmp_path):
    from daemon115.api.sandbox import Fault

    sandbox.inject(Fault("http503", endpoint="/open/offline/add_task_urls", times=None))
    result = daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}")
    assert result.returncode == 1
    listing = json.loads(daemon115("-c", str(config), "ledger", "list", "--json").stdout)
    assert [(e["info_hash"], e["status"]) for e in listing] == [(HEX, "queued")]
    sandbox.clear_faults()


def test_ledger_list_json_fields_and_status_filter(config):
    daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}", "https://Example.ORG/a.torrent#frag")
    doc = json.loads(daemon115("-c", str(config), "ledger", "list", "--json").stdout)
    by_url = {e["url"]: e for e in doc}
    http = by_url["https://example.org/a.torrent"]
    assert http["status"] == "submitted" and http["target"] == "42"
    assert len(http["info_hash"]) == 40  # unknown until 115 named the task's hash in its answer
    assert http["source"] == "cli"
    assert {"info_hash", "url", "status", "target", "source", "task_status", "percent"} <= set(http)
    assert json.loads(daemon115("-c", str(config), "ledger", "list", "--status", "failed", "--json").stdout) == []


def test_ledger_show_tells_the_whole_story(config):
    daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}&dn=Leaves")
    daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}")
    shown = daemon115("-c", str(config), "ledger", "show", f"magnet:?xt=urn:btih:{HEX.upper()}")
    assert shown.returncode == 0, shown.stderr
    for word in ("seen", "queued", "attempt", "submitted", "Leaves", "cli"):
        assert word in shown.stdout
    assert daemon115("-c", str(config), "ledger", "show", "0" * 40).returncode == 2


def test_ledger_retry_and_forget(config, sandbox):
    bad = "magnet:?xt=urn:btih:" + "1" * 40
    sandbox.add_foreign_task(bad, status=2, percent=100)
    daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}")
    assert daemon115("-c", str(config), "ledger", "retry", HEX).returncode == 2  # submitted, not failed
    forgot = daemon115("-c", str(config), "ledger", "forget", HEX)
    assert forgot.returncode == 0
    assert "queued:" in daemon115("-c", str(config), "add", f"magnet:?xt=urn:btih:{HEX}").stdout


def test_once_drains_the_queue(config, sandbox, tmp_path):
    from daemon115.intake import candidate
    from daemon115.ledger import Ledger
    from daemon115.links import parse_link

    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        ledger.record([candidate(parse_link(f"magnet:?xt=urn:btih:{i:040x}"), target="0", source="cli")
                       for i in range(250)])
    result = daemon115("-c", str(config), "once")
    assert result.returncode == 0, result.stderr
    assert [c["url_count"] for c in sandbox.stats()["add_calls"]] == [100, 100, 50]


def test_auth_import_writes_a_0600_token_file_read_from_stdin(tmp_path):
    config = tmp_path / "c.yaml"
    token = tmp_path / "state" / "token.json"
    config.write_text(f"auth: {{token_file: '{token}'}}\n")
    result = daemon115("-c", str(config), "auth", "import", "--access-token", "-", "--refresh-token", "-",
                       stdin="at_" + "a" * 48 + "\nrt_" + "b" * 48 + "\n")
    assert result.returncode == 0, result.stderr
    assert oct(token.stat().st_mode & 0o777) == "0o600"
    assert json.loads(token.read_text())["refresh_token"] == "rt_" + "b" * 48
    assert "a" * 48 not in result.stdout + result.stderr
    status = daemon115("-c", str(config), "auth", "status", "--json")
    doc = json.loads(status.stdout)
    assert doc["present"] and doc["expires_at"] and "a" * 48 not in status.stdout


def test_sandbox_command_prints_its_url_first_and_a_token_file_second(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "daemon115", "sandbox", "--port", "0", "--token-file",
                             str(tmp_path / "t.json")], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        token_path = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert Path(token_path) == tmp_path / "t.json" and json.loads(Path(token_path).read_text())["access_token"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_demo_runs_end_to_end():
    result = daemon115("demo")
    assert result.returncode == 0, result.stderr
    for event in ("feed polled", "drop_queued", "drop_failed", "link_submitted", "task_completed", "cleanup_action"):
        assert event in result.stdout, event
    assert "5 submitted" in result.stdout and "broken.magnet.error" in result.stdout


def test_auth_login_runs_the_device_flow_and_writes_a_usable_token_file(sandbox, tmp_path):
    token = tmp_path / "login" / "token.json"
    config = tmp_path / "c.yaml"
    config.write_text(f"api: {{base_url: '{sandbox.url}', passport_url: '{sandbox.url}', qrcode_url: '{sandbox.url}',"
                      f" min_interval: 0s}}\nauth: {{token_file: '{token}'}}\n")
    result = daemon115("-c", str(config), "auth", "login", "--client-id", "100195123")
    assert result.returncode == 0, result.stderr
    assert "QR code content:" in result.stdout and "Logged in" in result.stdout
    stored = json.loads(token.read_text())
    assert stored["access_token"] not in result.stdout + result.stderr
    assert daemon115("-c", str(config), "whoami").returncode == 0


def test_check_online_resolves_every_target(sandbox, token_file, tmp_path):
    sandbox.add_folder("/Downloads/Anime")
    config = tmp_path / "c.yaml"
    config.write_text(f"""\
api: {{base_url: "{sandbox.url}", passport_url: "{sandbox.url}", qrcode_url: "{sandbox.url}", min_interval: 0s}}
auth: {{token_file: "{token_file}"}}
ledger: {{path: "{tmp_path / 'ledger.sqlite3'}"}}
watch:
  - {{path: "{tmp_path}", target: "/Downloads/Anime"}}
feeds:
  - {{name: f, url: "http://127.0.0.1:9/rss", target: "/Downloads/New", accept_all: true}}
""")
    result = daemon115("-c", str(config), "check", "--online")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "target /Downloads/Anime -> folder id" in result.stdout
    assert "target /Downloads/New: missing; created on first use" in result.stdout
    assert "valid for account" in result.stdout
