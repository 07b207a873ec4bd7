"""The `notify:` section: three kinds of notifier, defaults, secrets kept out of repr and messages, exact key paths."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon115 import config
from daemon115.config import NOTIFY_EVENTS, BarkNotify, ConfigError, Problem, TelegramNotify, WebhookNotify

REPO = Path(__file__).resolve().parents[1]
BOT_TOKEN = "123456:AAHsecretBotTokenValue_xyz"
DEVICE_KEY = "BarkDeviceKeySecret42"
HOOK_SECRET = "hook-bearer-secret-9f8e7d"
ENV = {"HOME": "/home/tester", "TELEGRAM_BOT_TOKEN": BOT_TOKEN, "BARK_KEY": DEVICE_KEY, "HOOK_TOKEN": HOOK_SECRET}
SECRETS = (BOT_TOKEN, DEVICE_KEY, HOOK_SECRET)

FULL = """\
notify:
  - type: webhook
    url: https://example.org/hook
    headers: {Authorization: "Bearer ${HOOK_TOKEN}"}
  - type: telegram
    bot_token: ${TELEGRAM_BOT_TOKEN}
    chat_id: "123456"
    api_url: http://127.0.0.1:8081/
  - type: bark
    device_key: ${BARK_KEY}
    events: [failed, authorization_needed]
    max_per_hour: 5
    timeout: 3s
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        config.loads(text, env=ENV if env is None else env)
    return list(caught.value.problems)


def test_notifications_are_off_by_default() -> None:
    assert config.loads("", env=ENV).notify == ()
    assert config.loads("notify: []\n", env=ENV).notify == ()
    assert config.loads("notify:\n", env=ENV).notify == ()


def test_each_kind_reads_into_its_own_frozen_value_with_the_documented_defaults() -> None:
    hook, bot, push = config.loads(FULL, env=ENV).notify
    assert hook == WebhookNotify(url="https://example.org/hook", headers={"Authorization": f"Bearer {HOOK_SECRET}"})
    assert bot == TelegramNotify(bot_token=BOT_TOKEN, chat_id="123456", api_url="http://127.0.0.1:8081")
    assert push == BarkNotify(device_key=DEVICE_KEY, events=("failed", "authorization_needed"), max_per_hour=5,
                              timeout=3.0)
    assert (hook.type, bot.type, push.type) == ("webhook", "telegram", "bark")
    assert hook.events == NOTIFY_EVENTS and hook.max_per_hour == 30 and hook.timeout == 10.0
    assert push.server == "https://api.day.app" and TelegramNotify(bot_token="1:a", chat_id="1").api_url == \
        "https://api.telegram.org"
    with pytest.raises(dataclasses.FrozenInstanceError):
        bot.chat_id = "1"  # type: ignore[misc]


def test_chat_ids_may_be_numbers_negative_group_ids_or_channel_names() -> None:
    def chat(value: str) -> str:
        text = f"notify:\n  - {{type: telegram, bot_token: '1:a', chat_id: {value}}}\n"
        return config.loads(text, env=ENV).notify[0].chat_id
    assert (chat("123456"), chat("-1001234567890"), chat("'@my_channel'")) == ("123456", "-1001234567890",
                                                                               "@my_channel")


def test_secrets_appear_neither_in_repr_nor_in_any_problem_message() -> None:
    cfg = config.loads(FULL, env=ENV)
    assert not any(secret in repr(cfg) for secret in SECRETS)
    broken = FULL.replace("chat_id: \"123456\"", "chat_id: [1]").replace("max_per_hour: 5", "max_per_hour: 0")
    env = {**ENV, "TELEGRAM_BOT_TOKEN": "bot" + BOT_TOKEN, "BARK_KEY": DEVICE_KEY + "/x",
           "HOOK_TOKEN": HOOK_SECRET + "\n"}
    text = "\n".join(map(str, problems_of(broken, env)))
    assert "notify[1].bot_token" in text and "notify[2].device_key" in text and "notify[0].headers" in text
    assert not any(secret in text for secret in SECRETS)


BROKEN = [
    ("notify:\n  - {type: telegram, bot_token: '1:a'}\n", "notify[0].chat_id", "required key is missing"),
    ("notify:\n  - {type: webhook, url: 'https://e.org/'}\n  - {type: telegram, bot_token: '1:a'}\n",
     "notify[1].chat_id", "required key is missing"),
    ("notify:\n  - {type: telegram, chat_id: 1}\n", "notify[0].bot_token", "required key is missing"),
    ("notify:\n  - {type: bark}\n", "notify[0].device_key", "required key is missing"),
    ("notify:\n  - {type: webhook}\n", "notify[0].url", "required key is missing"),
    ("notify:\n  - {type: slack, url: 'https://e.org/'}\n", "notify[0].type",
     "unknown notifier type 'slack' (expected one of webhook, telegram, bark)"),
    ("notify:\n  - {url: 'https://e.org/'}\n", "notify[0].type", "required key is missing (one of webhook"),
    ("notify:\n  - {type: 3}\n", "notify[0].type", "unknown notifier type 3"),
    ("notify:\n  - webhook\n", "notify[0]", "expected a mapping of keys, got a string"),
    ("notify: {type: webhook}\n", "notify", "expected a list of notifiers, got a mapping"),
    ("notify:\n  - {type: bark, device_key: k, url: 'https://e.org/'}\n", "notify[0].url", "unknown key"),
    ("notify:\n  - {type: telegram, bot_token: '1:a', chat_id: 1, api_urll: 'https://e.org'}\n",
     "notify[0].api_urll", "unknown key (did you mean 'api_url'?)"),
    ("notify:\n  - {type: webhook, url: 'ftp://e.org/'}\n", "notify[0].url", "expected an http:// or https:// URL"),
    ("notify:\n  - {type: bark, device_key: k, server: day.app}\n", "notify[0].server", "expected an http://"),
    ("notify:\n  - {type: telegram, bot_token: 'bot1:a', chat_id: 1}\n", "notify[0].bot_token",
     "expected the bot token @BotFather gave"),
    ("notify:\n  - {type: telegram, bot_token: '1:a', chat_id: 'me'}\n", "notify[0].chat_id",
     "expected a chat id like \"123456\""),
    ("notify:\n  - {type: bark, device_key: 'a/b'}\n", "notify[0].device_key", "expected the device key"),
    ("notify:\n  - {type: bark, device_key: k, events: [submitted, done]}\n", "notify[0].events",
     "unknown event 'done' (expected any of submitted, completed, failed, authorization_needed)"),
    ("notify:\n  - {type: bark, device_key: k, events: []}\n", "notify[0].events", "must name at least one event"),
    ("notify:\n  - {type: bark, device_key: k, max_per_hour: 0}\n", "notify[0].max_per_hour", "must be at least 1"),
    ("notify:\n  - {type: bark, device_key: k, timeout: 0s}\n", "notify[0].timeout", "must be more than 0"),
    ("notify:\n  - {type: webhook, url: 'https://e.org/', headers: {'Bad Name': x}}\n",
     "notify[0].headers.Bad Name", "header and cookie names must be plain words"),
    ("notify:\n  - {type: bark, device_key: '${BARK}'}\n", "notify[0].device_key",
     "environment variable BARK is not set"),
]


@pytest.mark.parametrize("text, path, message", BROKEN, ids=[f"{i}-{case[1]}" for i, case in enumerate(BROKEN)])
def test_a_broken_notifier_names_the_exact_key_path(text: str, path: str, message: str) -> None:
    [problem] = problems_of(text, {"HOME": "/home/tester"})
    assert problem.path == path
    assert message in problem.message


def test_every_broken_notifier_is_reported_at_once_in_file_order() -> None:
    text = ("notify:\n  - {type: telegram, bot_token: x, chat_id: 1}\n  - {type: nope}\n"
            "  - {type: bark, device_key: k, timeout: soon}\n")
    assert [p.path for p in problems_of(text)] == ["notify[0].bot_token", "notify[1].type", "notify[2].timeout"]


def test_the_example_documents_every_notifier_key_and_its_commented_block_is_valid() -> None:
    text = (REPO / "config.example.yaml").read_text()
    block = text[text.index("\nnotify: []"):]
    keys = {f.name for cls in (WebhookNotify, TelegramNotify, BarkNotify) for f in dataclasses.fields(cls)}
    assert {key for key in keys if not re.search(rf"^#\s*(- )?{key}:", block, re.MULTILINE)} == set()
    uncommented = block.replace("notify: []", "notify:").replace("\n#", "\n")
    hook, bot, push = config.loads(uncommented, env=ENV).notify
    assert (hook.type, bot.type, push.type) == ("webhook", "telegram", "bark")
    assert bot.bot_token == BOT_TOKEN and push.events == ("failed", "authorization_needed")


NOTIFY_KEYS = sorted({f.name for cls in (WebhookNotify, TelegramNotify, BarkNotify) for f in dataclasses.fields(cls)}
                     | {"bogus"})
VALUES = (st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=8) | st.lists(st.text(max_size=5),
          max_size=2) | st.sampled_from(["webhook", "telegram", "bark", "https://e.org/", "1:a", "failed", "${X}"]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(NOTIFY_KEYS), VALUES, max_size=5) | VALUES, max_size=3))
def test_any_notify_section_gives_notifiers_or_problems_never_a_crash(entries: list) -> None:
    try:
        cfg = config.loads(yaml.safe_dump({"notify": entries}), env={})
    except ConfigError as exc:
        assert exc.problems and all(p.path.startswith("notify") and p.message for p in exc.problems)
    else:
        assert all(t.type in ("webhook", "telegram", "bark") for t in cfg.notify)
