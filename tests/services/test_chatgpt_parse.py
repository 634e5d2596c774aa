"""chatgpt-source's parse mode: the model writes the event, which is checked as untrusted data before it is published.

Against the fake Chat Completions API of :mod:`tests.services.chatgpt_api`, whose scripted ``replies``
stand for what a model wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from runtime.errors import ConfigError
from runtime.validation import validate_model
from services.http.chatgpt.connector import ChatGptSource, ChatGptSourceConfig
from tests.services.chatgpt_api import API_KEY, FakeOpenAI, Pump, config_for, post, started, through_the_worker


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    async with fake.server:
        yield fake


PARSE_PROMPT = "Write the order in ${text} as a CloudEvent with type and data. Text: ${text}"


def _parse_config(fake: FakeOpenAI, **overrides: Any) -> ChatGptSourceConfig:
    return config_for(fake, mode="parse", parse_prompt=PARSE_PROMPT, **overrides)


@pytest.fixture
async def parsing(fake: FakeOpenAI) -> AsyncIterator[tuple[ChatGptSource, Pump]]:
    source, pump = await started(_parse_config(fake), allowed_topics=("orders.*",))
    yield source, pump
    await pump.close()
    await source.stop()


_ORDER = {"type": "com.example.order", "datacontenttype": "application/json", "data": {"item": "tea", "count": 2}}


@pytest.mark.parametrize(
    "reply",
    [
        orjson.dumps(_ORDER).decode(),
        orjson.dumps({"specversion": "1.0", **_ORDER}).decode(),
        "```json\n" + orjson.dumps(_ORDER, option=orjson.OPT_INDENT_2).decode() + "\n```",
    ],
    ids=["plain", "specversion", "fenced"],
)
async def test_parse_publishes_the_models_type_and_data_with_the_requests_id(
    fake: FakeOpenAI, parsing: tuple[ChatGptSource, Pump], reply: str
) -> None:
    source, pump = parsing
    fake.replies = [reply]
    status, answer, _ = await post(source, {"text": "two teas", "id": "o-1"})
    assert (status, answer) == (200, {"id": "o-1", "dead_lettered": False})
    [record] = pump.seen
    assert (record.id, record.type, record.datacontenttype, record.data) == (
        "o-1",
        "com.example.order",
        "application/json",
        {"item": "tea", "count": 2},
    )
    assert (record.source, record.subject, record.refusal) == (None, None, None)  # the source and topic: the config's


async def test_parse_publishes_to_a_topic_the_model_names_only_when_allowed_topics_admits_it(
    fake: FakeOpenAI, parsing: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = parsing
    fake.replies = [orjson.dumps({**_ORDER, "subject": "orders.eu"}).decode()]
    assert (await post(source, {"text": "two teas", "id": "o-2"}))[1]["dead_lettered"] is False
    assert [(record.subject, record.refusal) for record in pump.seen] == [("orders.eu", None)]


async def test_the_parse_prompt_carries_the_posted_text_exactly_never_read_as_a_template(
    fake: FakeOpenAI, parsing: tuple[ChatGptSource, Pump]
) -> None:
    source, _ = parsing
    text = "${text} ${id} $text {text} {{data}} %(x)s \\1 $$ ${"
    fake.replies = [orjson.dumps(_ORDER).decode()]
    assert (await post(source, {"text": text}))[0] == 200
    [(_, _, _, body)] = fake.requests
    prompt = f"Write the order in {text} as a CloudEvent with type and data. Text: {text}"
    assert body["messages"] == [{"role": "user", "content": prompt}]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({**_ORDER, "id": "forged-id"}, "sets 'id', which it may not"),
        ({**_ORDER, "source": "/elsewhere"}, "sets 'source', which it may not"),
        ({**_ORDER, "subject": "payroll"}, "topic 'payroll' named by the input is not allowed"),
        ({**_ORDER, "priority": "high", "time": "2020-01-01T00:00:00Z"}, "sets 'priority', 'time', which it may not"),
        ({**_ORDER, "specversion": "0.3"}, "specversion other than 1.0"),
        ({"type": "com.example.order"}, "has no data"),
        ({**_ORDER, "type": 5}, "'type' in the model's answer must be a non-empty string"),
        ({**_ORDER, "type": ""}, "'type' in the model's answer must be a non-empty string"),
        ({"datacontenttype": "text/plain", "data": {"item": "tea"}}, "data of type dict needs a JSON content type"),
        ([_ORDER], "a JSON list, not an object"),
        ("Sure! Here is the event you asked for.", "the model's answer is not JSON"),
    ],
    ids=[
        "sets-id",
        "sets-source",
        "disallowed-topic",
        "unknown-fields",
        "specversion",
        "no-data",
        "type-not-text",
        "type-empty",
        "invalid-event",
        "not-an-object",
        "not-json",
    ],
)
async def test_a_parsed_answer_the_config_does_not_allow_is_dead_lettered_with_the_reason_and_the_next_one_published(
    fake: FakeOpenAI, parsing: tuple[ChatGptSource, Pump], reply: Any, reason: str
) -> None:
    source, pump = parsing
    written = reply if isinstance(reply, str) else orjson.dumps(reply).decode()
    fake.replies = [written, orjson.dumps(_ORDER).decode()]
    status, answer, _ = await post(source, {"text": "two teas", "id": "o-3"})
    assert (status, answer) == (200, {"id": "o-3", "dead_lettered": True})
    assert (await post(source, {"text": "one cake", "id": "o-4"}))[1] == {"id": "o-4", "dead_lettered": False}
    dead, published = pump.seen
    assert dead.id == "o-3" and dead.refusal is not None and reason in dead.refusal, dead.refusal
    assert dead.data == {"text": "two teas", "answer": written}  # what the model wrote, kept for the operator
    assert (published.id, published.type, published.refusal) == ("o-4", "com.example.order", None)
    assert fake.server.calls == 2  # a wrong answer is not asked again


async def test_parse_refuses_the_attributes_parse_attributes_leaves_out(fake: FakeOpenAI) -> None:
    source, pump = await started(_parse_config(fake, parse_attributes=["datacontenttype"]))
    try:
        fake.replies = [orjson.dumps(_ORDER).decode()]
        assert (await post(source, {"text": "two teas"}))[1]["dead_lettered"] is True
        [dead] = pump.seen
        assert dead.refusal is not None and "sets 'type', which it may not" in dead.refusal
    finally:
        await pump.close()
        await source.stop()


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"mode": "parse"}, "mode parse needs a prompt template with ${text}"),
        ({"mode": "parse", "parse_prompt": "Make an event of the text."}, "mode parse needs a prompt template with ${text}"),
        ({"mode": "parse", "parse_prompt": "type ${type}, text ${text}"}, "unknown placeholder(s) ${type}"),
        ({"parse_prompt": "Text: ${text}"}, "parse_prompt is used only in mode parse"),
    ],
)
def test_a_parse_config_without_a_usable_template_fails_at_start_naming_the_key(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_model(ChatGptSourceConfig, {"api_key": API_KEY, **settings}, prefix="config")
    assert info.value.key == "config.parse_prompt"
    assert problem in info.value.problem and "${text}" in str(info.value)


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_through_the_worker_a_parsed_event_keeps_our_id_and_source_and_a_forged_one_is_dead_lettered(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.replies = [
        orjson.dumps({"type": "com.example.order", "subject": "orders.eu", "data": {"item": "tea"}}).decode(),
        orjson.dumps({"id": "forged", "source": "/elsewhere", "data": {"item": "tea"}}).decode(),
        orjson.dumps({"type": "com.example.order", "data": {"item": "cake"}}).decode(),
    ]
    received = await through_the_worker(
        fake,
        tmp_path,
        3,
        settings={"mode": "parse", "parse_prompt": "Order: ${text}"},
        source={"event_source": "/shop/orders", "allowed_topics": ["orders.*"]},
        topics=("answers", "orders.eu", "chatgpt-answers-dlq"),
    )
    assert [message[3]["messages"][-1]["content"] for message in fake.requests] == [f"Order: prompt {n}" for n in (1, 2, 3)]
    [chosen] = received["orders.eu"]
    assert (chosen.get_id(), chosen.get_source(), chosen.get_type(), chosen.get_subject(), chosen.get_data()) == (
        "p-1",
        "/shop/orders",
        "com.example.order",
        "orders.eu",
        {"item": "tea"},
    )
    [answer] = received["answers"]
    assert (answer.get_id(), answer.get_source(), answer.get_subject(), answer.get_data()) == (
        "p-3",
        "/shop/orders",
        "answers",
        {"item": "cake"},
    )
    [dead] = received["chatgpt-answers-dlq"]
    assert dead.get_id() == "p-2" and "sets 'id', 'source'" in str(dead.get_attributes()["dlqreason"])
