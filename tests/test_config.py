"""The config file: durations, sizes, defaults, expansion, and every problem reported with its exact key path."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon115 import __version__, config
from daemon115.config import ConfigError, Problem, format_duration, parse_duration, parse_size, parse_target

REPO = Path(__file__).resolve().parents[1]
HOME = "/home/tester"
ENV = {"HOME": HOME}


def problems_of(text: str, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        config.loads(text, env=ENV if env is None else env)
    return list(caught.value.problems)


def only_problem(text: str, env: dict[str, str] | None = None) -> Problem:
    found = problems_of(text, env)
    assert len(found) == 1, found
    return found[0]


# --- durations and sizes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("30s", 30), ("10m", 600), ("6h", 21600), ("2d", 172800), ("500ms", 0.5), ("1h30m", 5400),
    ("1d12h", 129600), ("1.5h", 5400), (" 45 s ", 45), ("0s", 0), ("0", 0), ("90", 90), ("2.5", 2.5),
    (30, 30), (0.25, 0.25), (0, 0),
])
def test_durations_take_unit_suffixes_and_bare_numbers_are_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "abc", "5x", "-5s", "10M", "s", "1h-30m", "1 h 30", True, None, [1], -1,
                                   float("inf"), float("nan")])
def test_durations_reject_negatives_empty_text_unknown_units_and_other_types(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


def test_a_negative_duration_is_called_negative() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration("-5s")


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=400 * 86400))
def test_format_duration_reads_back_as_the_same_number_of_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value, size", [
    ("500MB", 500_000_000), ("1.5GiB", 1_610_612_736), ("1.5 GiB", 1_610_612_736), ("700mb", 700_000_000),
    ("1KB", 1000), ("1KiB", 1024), ("1MB", 1000**2), ("1MiB", 1024**2), ("1GB", 1000**3), ("1GiB", 1024**3),
    ("1TB", 1000**4), ("1TiB", 1024**4), ("2tib", 2 * 1024**4), ("8GB", 8_000_000_000), ("100B", 100),
    ("100", 100), ("0", 0), (4096, 4096), (".5KB", 500), ("1.1GB", 1_100_000_000),
])
def test_sizes_use_powers_of_1000_for_kb_and_powers_of_1024_for_kib(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "abc", "5XB", "1.5 G", "-1MB", "MB", True, None, {"a": 1}, -3])
def test_sizes_reject_unknown_units_negatives_and_other_types(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("value, target", [("0", "0"), ("2894785692874528", "2894785692874528"), (0, "0"),
                                           (123, "123"), ("/Downloads", "/Downloads"), ("/", "/")])
def test_targets_are_digit_strings_or_absolute_paths_and_yaml_ints_become_digits(value: object, target: str) -> None:
    assert parse_target(value) == target


@pytest.mark.parametrize("value", ["Downloads", "", "12a", -1, True, None, 1.5, "١٢"])
def test_anything_else_is_not_a_target(value: object) -> None:
    with pytest.raises(ValueError, match='target must be a folder id like "0" or a path like "/Downloads"'):
        parse_target(value)


# --- defaults and expansion ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "api:\nwatch:\nfeeds:\ncleanup:\n"])
def test_an_empty_file_is_a_valid_all_defaults_config(text: str) -> None:
    cfg = config.loads(text, env=ENV)
    assert cfg.api == config.ApiConfig()
    assert cfg.api.base_url == "https://proapi.115.com" and cfg.api.timeout == 30 and cfg.api.min_interval == 0.5
    assert cfg.api.max_retries == 4 and cfg.api.daily_call_budget is None
    assert cfg.auth.token_file == Path(HOME, ".local/state/daemon115/token.json") and cfg.auth.refresh_ahead == 600
    assert cfg.ledger.path == Path(HOME, ".local/state/daemon115/ledger.sqlite3")
    assert cfg.ledger.keep_details == 180 * 86400
    assert cfg.submit == config.SubmitConfig(batch_size=100, batch_window=2, default_target="0", max_attempts=10,
                                             create_folders=True)
    assert (cfg.watch, cfg.feeds, cfg.cleanup) == ((), (), ())
    assert (cfg.reconcile.every, cfg.reconcile.active_every) == (600, 60)
    assert (cfg.logging.level, cfg.logging.format, cfg.status.listen) == ("info", "auto", None)


def test_list_entries_get_their_defaults_and_inherit_submit_default_target() -> None:
    cfg = config.loads("submit: {default_target: /Inbox}\nwatch: [{path: /drop}]\n"
                       "feeds: [{name: f, url: 'https://e.org/rss', rules: [{include: x}]}]\n", env=ENV)
    assert cfg.watch[0] == config.WatchFolder(path=Path("/drop"), target="/Inbox", poll=None, poll_interval=5,
                                              recursive=False, resolve_torrents=False, settle=0.5, rescan_every=300)
    feed = cfg.feeds[0]
    assert (feed.target, feed.interval, feed.timeout, feed.max_size) == ("/Inbox", 900, 30, 10_000_000)
    assert feed.user_agent == f"daemon115/{__version__}" and dict(feed.headers) == {} and not feed.accept_all
    assert feed.rules[0].name == "f[0]" and feed.rules[0].target is None
    assert feed.rules[0].include[0].source == "x" and feed.rules[0].exclude == ()


def test_tilde_expands_to_home_and_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf.yaml"
    path.write_text("auth: {token_file: ~/t.json}\nledger: {path: state/ledger.db}\nwatch: [{path: '~'}]  # quoted: a bare ~ is YAML's null\n")
    cfg = config.load(path, env=ENV)
    assert cfg.auth.token_file == Path(HOME, "t.json")
    assert cfg.ledger.path == tmp_path / "state" / "ledger.db"
    assert cfg.watch[0].path == Path(HOME)


def test_env_variables_are_expanded_in_every_string() -> None:
    env = {**ENV, "HOST": "sandbox.local:8000", "TOKEN": "s3cret", "DIR": "/srv/drop", "FOLDER": "42"}
    cfg = config.loads("api: {base_url: 'http://${HOST}/'}\nsubmit: {default_target: '${FOLDER}'}\n"
                       "watch: [{path: '${DIR}/in'}]\n"
                       "feeds: [{name: f, url: 'https://${HOST}/rss', headers: {Authorization: 'Bearer ${TOKEN}'},"
                       " cookies: {uid: '${TOKEN}'}, accept_all: true}]\n", env=env)
    assert cfg.api.base_url == "http://sandbox.local:8000"  # and the trailing "/" is stripped
    assert cfg.submit.default_target == "42" and cfg.watch[0].path == Path("/srv/drop/in")
    assert cfg.feeds[0].url == "https://sandbox.local:8000/rss"
    assert dict(cfg.feeds[0].headers) == {"Authorization": "Bearer s3cret"} and cfg.feeds[0].cookies["uid"] == "s3cret"


def test_a_dollar_without_braces_is_left_alone_and_double_dollar_brace_is_a_literal() -> None:
    cfg = config.loads("feeds: [{name: f, url: 'https://e.org/', cookies: {a: 'x$y$$z', b: '$${HOME}'},"
                       " rules: [{include: ['end$']}]}]", env=ENV)
    assert dict(cfg.feeds[0].cookies) == {"a": "x$y$$z", "b": "${HOME}"}
    assert cfg.feeds[0].rules[0].include[0].source == "end$"


# --- what the loaded values are -----------------------------------------------------------------------------------

def test_regexes_are_compiled_case_insensitive_and_keep_their_source() -> None:
    cfg = config.loads("feeds: [{name: f, url: 'https://e.org/', rules: [{include: 'frieren.*1080P'}]}]", env=ENV)
    regex = cfg.feeds[0].rules[0].include[0]
    assert regex.source == "frieren.*1080P" and regex.pattern.flags & re.IGNORECASE
    assert regex.search("[Sub] Frieren - 03 (1080p)") and not regex.search("Frieren 720p")


def test_cleanup_actions_carry_both_the_names_and_the_115_numbers() -> None:
    cfg = config.loads("cleanup:\n- {name: a, clear: completed+files, confirm_delete_files: true}\n"
                       "- {name: b, delete: {status: [failed, queued, downloading, completed, failed]}}\n"
                       "- {name: c, delete: {status: completed, name: '^tmp', older_than: 1d}}\n", env=ENV)
    a, b, c = cfg.cleanup
    assert (a.clear.mode, a.clear.flag, a.delete, a.deletes_files) == ("completed+files", 4, None, True)
    assert b.delete.status == ("failed", "queued", "downloading", "completed") and b.delete.status_codes == (-1, 0, 1, 2)
    assert (b.delete.only_ours, b.delete.with_files, b.delete.retry_failed, b.max_deletions) == (True, False, 0, 50)
    assert c.delete.status_codes == (2,) and c.delete.name.search("TMP-file") and c.delete.older_than == 86400
    assert [config.CLEAR_FLAGS[m] for m in ("completed", "all", "failed", "running", "completed+files",
                                            "all+files")] == [0, 1, 2, 3, 4, 5]


def test_subfolders_map_to_targets_in_a_recursive_watch_folder() -> None:
    cfg = config.loads("watch: [{path: /drop, recursive: true, subfolders: {anime: /Anime, 2024: 77}}]", env=ENV)
    assert dict(cfg.watch[0].subfolders) == {"anime": "/Anime", "2024": "77"}


def test_status_listen_keeps_host_and_port_and_a_bare_port_means_loopback() -> None:
    assert config.loads("status: {listen: '[::1]:8115'}", env=ENV).status.port == 8115
    status = config.loads("status: {listen: 9000}", env=ENV).status
    assert (status.listen, status.host, status.port) == ("127.0.0.1:9000", "127.0.0.1", 9000)


def test_the_config_is_immutable_and_its_repr_hides_feed_secrets() -> None:
    cfg = config.loads("feeds: [{name: f, url: 'https://e.org/rss?passkey=PK123', headers: {X-Key: HK456},"
                       " cookies: {c: CK789}, accept_all: true}]", env=ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.submit.batch_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.feeds[0].headers["X-Key"] = "other"  # type: ignore[index]
    assert not any(secret in repr(cfg) for secret in ("PK123", "HK456", "CK789"))


# --- the example --------------------------------------------------------------------------------------------------

def test_the_example_config_loads_without_problems_and_warns_only_as_expected(tmp_path: Path) -> None:
    cfg = config.load(REPO / "config.example.yaml", env={"HOME": str(tmp_path)})
    assert cfg.watch[0].path == tmp_path / "115-drop"
    assert cfg.feeds[0].rules[0].min_size == 100_000_000 and cfg.feeds[0].rules[0].max_size == 8_000_000_000
    assert cfg.feeds[0].rules[0].target == "123"
    assert [p.name for p in cfg.cleanup] == ["clear-failed", "stalled"]
    assert cfg.cleanup[1].delete.max_progress == 5 and cfg.cleanup[1].delete.older_than == 3 * 86400
    assert config.warnings(cfg) == [
        f"watch[0].path: {tmp_path / '115-drop'} does not exist (yet); `run` picks it up when it appears",
        "cleanup[0].clear: policy 'clear-failed' clears failed tasks of the whole account, not only the ones this "
        "daemon submitted",
    ]
    (tmp_path / "115-drop").mkdir()
    assert len(config.warnings(cfg)) == 1


def test_the_example_mentions_every_key_of_the_schema() -> None:
    text = (REPO / "config.example.yaml").read_text()
    classes = [config.ApiConfig, config.AuthConfig, config.LedgerConfig, config.SubmitConfig, config.WatchFolder,
               config.Feed, config.Rule, config.ReconcileConfig, config.CleanupPolicy, config.DeleteAction,
               config.LoggingConfig, config.StatusConfig, config.Config]
    keys = {f.name for cls in classes for f in dataclasses.fields(cls)} - {"status_codes", "source"}
    assert {key for key in keys if not re.search(rf"^\s*(- |# )?{key}:", text, re.MULTILINE)} == set()


# --- broken configs: each problem at its exact key path -----------------------------------------------------------

FEEDS_2 = ("feeds:\n  - {name: a, url: 'https://e.org/a', accept_all: true}\n"
           "  - {name: b, url: 'https://e.org/b', accept_all: true}\n")

BROKEN = [
    (FEEDS_2 + "  - name: c\n    url: https://e.org/c\n    rules:\n      - include: [ok, 'x(']\n",
     "feeds[2].rules[0].include[1]", "bad regex 'x(': missing ), unterminated subpattern at position 1"),
    ("feeds:\n  - {name: a, url: 'https://e.org/', intervall: 5m}\n",
     "feeds[0].intervall", "unknown key (did you mean 'interval'?)"),
    ("submit:\n  batch_size: ten\n", "submit.batch_size", "expected an integer, got 'ten'"),
    ("submit:\n  batch_size: 200\n", "submit.batch_size", "must be between 1 and 115"),
    ("submit:\n  batch_size: 0\n", "submit.batch_size", "must be between 1 and 115"),
    ("submit:\n  create_folders: 'yes please'\n", "submit.create_folders", "expected true or false"),
    ("feeds:\n  - url: https://e.org/\n", "feeds[0].name", "required key is missing"),
    ("feeds:\n  - name: a\n", "feeds[0].url", "required key is missing"),
    ("watch:\n  - target: '0'\n", "watch[0].path", "required key is missing"),
    (FEEDS_2 + "  - {name: a, url: 'https://e.org/c', accept_all: true}\n",
     "feeds[2].name", "duplicate feed name 'a' (first at feeds[0].name)"),
    ("watch:\n  - path: /drop\n  - path: /drop/\n", "watch[1].path", "duplicate watch folder '/drop'"),
    ("cleanup:\n  - {name: c, clear: everything}\n", "cleanup[0].clear", "must be one of completed, all, failed"),
    ("cleanup:\n  - name: wipe\n    delete: {status: [completed], with_files: true}\n",
     "cleanup[0]", "add confirm_delete_files: true"),
    ("cleanup:\n  - {name: nuke, clear: all+files}\n", "cleanup[0]", "add confirm_delete_files: true"),
    ("cleanup:\n  - name: all\n    delete: {older_than: 1d}\n", "cleanup[0].delete.status", "needs at least status"),
    ("cleanup:\n  - {name: x, every: 1h}\n", "cleanup[0]", "needs one of clear: or delete:"),
    ("cleanup:\n  - {name: x, clear: failed, delete: {status: failed}}\n", "cleanup[0]", "has both clear: and delete:"),
    ("cleanup:\n  - name: x\n    delete: {status: [stuck]}\n", "cleanup[0].delete.status", "unknown task status 'stuck'"),
    ("cleanup:\n  - name: x\n    delete: {status: [queued], min_progress: 50, max_progress: 10}\n",
     "cleanup[0].delete.min_progress", "is larger than max_progress"),
    ("cleanup:\n  - name: x\n    delete: {status: [queued], max_progress: 150}\n",
     "cleanup[0].delete.max_progress", "from 0 to 100"),
    ("api:\n  timeout: 5x\n", "api.timeout", "bad duration '5x'"),
    ("reconcile:\n  every: -10m\n", "reconcile.every", "must not be negative"),
    ("feeds:\n  - {name: a, url: 'https://e.org/', interval: 30s}\n", "feeds[0].interval", "must be at least 1m"),
    ("feeds:\n  - name: a\n    url: https://e.org/\n    rules: [{max_size: 5 parsecs}]\n",
     "feeds[0].rules[0].max_size", "bad size '5 parsecs'"),
    ("feeds:\n  - name: a\n    url: https://e.org/\n    rules: [{min_size: 8GB, max_size: 100MB}]\n",
     "feeds[0].rules[0].min_size", "is larger than max_size (8GB > 100MB)"),
    ("watch:\n  - {path: /drop, target: Downloads}\n",
     "watch[0].target", 'target must be a folder id like "0" or a path like "/Downloads"'),
    ("feeds:\n  - {name: a, url: 'https://e.org/', rules: [{target: 1.5}]}\n", "feeds[0].rules[0].target", "target"),
    ("feeds:\n  - {name: a, url: 'https://${RSS_HOST}/rss'}\n",
     "feeds[0].url", "environment variable RSS_HOST is not set"),
    ("ledger:\n  path: '${STATE/ledger'\n", "ledger.path", "unterminated ${"),
    ("feeds:\n  - {name: a, url: 'ftp://e.org/rss'}\n", "feeds[0].url", "expected an http:// or https:// URL"),
    ("api:\n  base_url: proapi.115.com\n", "api.base_url", "expected an http:// or https:// URL"),
    ("watch:\n  - path: /drop\n    subfolders: {anime: /Anime}\n", "watch[0].subfolders", "needs recursive: true"),
    ("watch:\n  - {path: /drop, recursive: true, subfolders: {../up: '1'}}\n",
     "watch[0].subfolders.../up", "relative paths inside the watch folder"),
    ("feeds:\n  - name: a\n    url: https://e.org/\n    rules: [{name: r}, {name: r}]\n",
     "feeds[0].rules[1].name", "duplicate rule name 'r'"),
    ("feeds:\n  - {name: a, url: 'https://e.org/', rules: [{include: [1080]}]}\n",
     "feeds[0].rules[0].include[0]", "expected a regex string, got 1080"),
    ("logging:\n  level: loud\n", "logging.level", "must be one of debug, info, warning, error"),
    ("status:\n  listen: 'localhost:70000'\n", "status.listen", "port from 1 to 65535"),
    ("api:\n  daily_call_budget: 0\n", "api.daily_call_budget", "must be at least 1"),
    ("watch: ~/drop\n", "watch", "expected a list, got a string"),
    ("watch:\n  -\n", "watch[0]", "expected a mapping of keys, got null"),
    ("feeds:\n  - name: a\n    name: b\n    url: https://e.org/\n", "feeds[0].name", "duplicate key"),
    ("intervall: 5m\n", "intervall", "unknown key (known keys: api, auth, ledger"),
]


@pytest.mark.parametrize("text, path, message", BROKEN, ids=[f"{i}-{case[1]}" for i, case in enumerate(BROKEN)])
def test_a_broken_config_names_the_exact_key_path(text: str, path: str, message: str) -> None:
    problem = only_problem(text)
    assert problem.path == path
    assert message in problem.message
    assert str(problem) == f"{path}: {problem.message}"


def test_the_messages_read_exactly_as_documented() -> None:
    assert str(only_problem(BROKEN[0][0])) == ("feeds[2].rules[0].include[1]: bad regex 'x(': missing ), "
                                               "unterminated subpattern at position 1")
    assert str(only_problem("submit: {batch_size: ten}")) == "submit.batch_size: expected an integer, got 'ten'"
    assert str(only_problem("feeds: [{name: a, url: 'https://e.org/', intervall: 5m}]")) == \
        "feeds[0].intervall: unknown key (did you mean 'interval'?)"
    assert str(only_problem("cleanup: [{name: wipe, clear: all+files}]")) == (
        "cleanup[0]: policy 'wipe' deletes files in the cloud (clear: all+files); add confirm_delete_files: true "
        "to this policy if that is meant")


KEYS = sorted({f.name for cls in (config.Config, config.ApiConfig, config.SubmitConfig, config.WatchFolder,
                                  config.Feed, config.Rule, config.CleanupPolicy, config.DeleteAction)
               for f in dataclasses.fields(cls)} | {"bogus"})
SCALARS = st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats() | st.text(max_size=12) | st.sampled_from(
    ["30s", "1h30m", "-1m", "5MB", "1.5GiB", "0", "/x", "https://e.org/", "${UNSET}", "${HOME}/x", "x(", "failed"])
YAML_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4), max_leaves=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), YAML_VALUES, max_size=6))
def test_any_yaml_document_gives_a_config_or_problems_never_a_crash(document: dict) -> None:
    try:
        config.loads(yaml.safe_dump(document), env=ENV)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p.path, str) and p.message for p in exc.problems)


@pytest.mark.parametrize("text, line, column", [
    ("api:\n  timeout: [30s\n", 3, 1),
    ("feeds:\n  - name: a\n   url: b\n", 3, 4),
    ("submit:\n\tbatch_size: 5\n", 2, 1),
])
def test_a_yaml_syntax_error_is_one_problem_naming_line_and_column(text: str, line: int, column: int) -> None:
    problem = only_problem(text)
    assert problem.path == ""
    assert problem.message.startswith(f"<string>: YAML syntax error at line {line}, column {column}: ")


def test_a_top_level_that_is_not_a_mapping_is_a_problem_of_the_whole_file() -> None:
    assert "expected a mapping of sections" in only_problem("- api\n- feeds\n").message


def test_every_problem_is_reported_at_once_in_document_order() -> None:
    text = """\
cleanup:
  - {name: purge, clear: all+files}
submit:
  batch_size: 200
  default_target: Downloads
feeds:
  - name: f
    url: https://${RSS_HOST}/rss
    rules:
      - include: ['(unclosed']
  - url: https://e.org/rss
api:
  timeout: soon
"""
    found = problems_of(text)
    assert [p.path for p in found] == ["cleanup[0]", "submit.batch_size", "submit.default_target", "feeds[0].url",
                                       "feeds[0].rules[0].include[0]", "feeds[1].name", "api.timeout"]
    with pytest.raises(ConfigError) as caught:
        config.loads(text, env=ENV)
    assert str(caught.value).splitlines() == [str(p) for p in found]


def test_secrets_never_appear_in_problems() -> None:
    text = ("feeds:\n  - name: a\n    url: 'ftp://tracker.example/rss?passkey=PK123'\n"
            "    headers: {Authorization: [Bearer HK456], X-Bad: \"v\\nInjected: CK789\"}\n"
            "    cookies: 'session=CK000'\n")
    message = str(pytest.raises(ConfigError, config.loads, text, env=ENV).value)
    assert [p.path for p in problems_of(text)] == ["feeds[0].url", "feeds[0].headers.Authorization",
                                                   "feeds[0].headers.X-Bad", "feeds[0].cookies"]
    assert not any(secret in message for secret in ("PK123", "HK456", "CK789", "CK000"))


def test_a_yaml_error_does_not_quote_the_text_around_it() -> None:
    message = only_problem("feeds:\n  - name: a\n    cookies: {session: SECRETVALUE\n").message
    assert "SECRETVALUE" not in message and "line" in message


# --- files and default locations ----------------------------------------------------------------------------------

def test_an_explicit_missing_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: no such file")):
        config.load(missing, env=ENV)


def test_a_missing_file_at_the_default_location_gives_the_defaults_unless_it_must_exist(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    cfg = config.load(env=env)
    assert cfg.source == "" and cfg.auth.token_file == tmp_path / ".local/state/daemon115/token.json"
    assert config.warnings(cfg) == ["no config file found; using the built-in defaults"]
    with pytest.raises(ConfigError, match="no such file"):
        config.load(env=env, must_exist=True)


def test_daemon115_config_naming_a_missing_file_is_a_problem(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "DAEMON115_CONFIG": str(tmp_path / "typo.yaml")}
    with pytest.raises(ConfigError, match=r"typo\.yaml: no such file \(named by \$DAEMON115_CONFIG\)"):
        config.load(env=env)


def test_the_default_path_is_the_first_that_exists_else_the_xdg_one(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    xdg = tmp_path / "xdg" / "daemon115" / "config.yaml"
    assert config.default_config_path(env) == xdg
    assert config.default_config_path({"HOME": str(tmp_path)}) == tmp_path / ".config" / "daemon115" / "config.yaml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text("")
    assert config.default_config_path(env) == xdg
    mine = tmp_path / "mine.yaml"
    mine.write_text("submit: {batch_size: 7}\n")
    env["DAEMON115_CONFIG"] = str(mine)
    assert config.default_config_path(env) == mine
    assert config.load(env=env).submit.batch_size == 7


def test_a_file_with_a_bom_loads_and_problems_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfsubmit: {batch_size: 3}\n")
    assert config.load(path, env=ENV).submit.batch_size == 3
    path.write_text("api: {timeout: [\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: YAML syntax error at line 2")):
        config.load(path, env=ENV)


def test_a_file_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"feeds:\n  - name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(path, env=ENV)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent / "configs").glob("*.yaml")))
def test_each_broken_config_file_states_its_problems_in_its_first_lines(name: str) -> None:
    """Each file in tests/configs/ starts with one `# expect: PATH` comment per problem, in order."""
    path = Path(__file__).parent / "configs" / name
    expected = re.findall(r"^# expect: (\S*)", path.read_text(), re.MULTILINE)
    with pytest.raises(ConfigError) as caught:
        config.load(path, env=ENV)
    assert [p.path for p in caught.value.problems] == expected


# --- warnings -----------------------------------------------------------------------------------------------------

def test_warnings_point_out_legitimate_but_suspicious_settings(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = config.loads(f"""\
watch: [{{path: {tmp_path}}}, {{path: {tmp_path / 'later'}}}, {{path: {tmp_path / 'file'}}}]
feeds:
  - {{name: silent, url: 'https://e.org/'}}
  - {{name: all, url: 'https://e.org/', accept_all: true}}
cleanup:
  - name: foreign
    delete: {{status: [failed], only_ours: false}}
status: {{listen: '0.0.0.0:8115'}}
""", env=ENV)
    assert config.warnings(cfg) == [
        f"watch[1].path: {tmp_path / 'later'} does not exist (yet); `run` picks it up when it appears",
        f"watch[2].path: {tmp_path / 'file'} is not a directory",
        "feeds[0]: feed 'silent' has no rules and no accept_all: true, so it grabs nothing",
        "cleanup[0].delete.only_ours: policy 'foreign' also deletes tasks this daemon did not submit",
        "status.listen: 0.0.0.0:8115 can be reached from other machines",
    ]


def test_a_config_with_nothing_to_watch_or_poll_says_so() -> None:
    assert config.warnings(config.loads("submit: {batch_size: 10}", env=ENV)) == [
        "no watch folders and no feeds: only links given to `daemon115 add` will be submitted"]
