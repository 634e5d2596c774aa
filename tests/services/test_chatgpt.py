"""chatgpt-source (chat mode, the default) against the fake Chat Completions API of :mod:`tests.services.chatgpt_api`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from runtime.errors import ConfigError
from runtime.testing import SourceHarness, run_source_conformance
from runtime.validation import validate_model
from services.http.chatgpt.connector import EVENT_TYPE, ChatGptSource, ChatGptSourceConfig
from tests.servers import free_port
from tests.services.chatgpt_api import API_KEY, FakeOpenAI, Pump, config_for, post, started, through_the_worker
from tests.services.fake_http import DROP, PASS, Canned
from tests.services.http_source import until_closed
from tests.services.workers import until

SENDER_TOKEN = "sender-s3cret-token"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    async with fake.server:
        yield fake


@pytest.fixture
async def running(fake: FakeOpenAI) -> AsyncIterator[tuple[ChatGptSource, Pump]]:
    source, pump = await started(config_for(fake, system_prompt="Answer briefly."))
    yield source, pump
    await pump.close()
    await source.stop()


async def test_a_prompt_becomes_one_call_as_documented_and_its_answer_one_event(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    status, answer, _ = await post(source, {"text": "what is a mesh?", "id": "p-1"})
    assert (status, answer) == (200, {"id": "p-1", "dead_lettered": False})
    [(method, path, headers, body)] = fake.requests
    assert (method, path, headers["Authorization"]) == ("POST", "/v1/chat/completions", f"Bearer {API_KEY}")
    assert body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "what is a mesh?"}],
        "max_tokens": 64,
    }
    [record] = pump.seen
    assert (record.id, record.type, record.refusal) == ("p-1", EVENT_TYPE, None)
    assert record.data == {"answer": "echo: what is a mesh?", "model": "gpt-test", "finish_reason": "stop"}


async def test_the_sender_is_answered_only_once_the_event_is_stored(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    pump.committing.clear()
    request = asyncio.create_task(post(source, {"text": "hi", "id": "p-5"}))
    await asyncio.wait_for(pump.polled.wait(), 10)
    with pytest.raises(TimeoutError):  # polled, not committed: no answer yet
        await asyncio.wait_for(asyncio.shield(request), 0.3)
    pump.committing.set()
    status, answer, _ = await asyncio.wait_for(request, 10)
    assert (status, answer["id"]) == (200, "p-5")


async def test_more_prompts_than_queue_size_are_refused_with_retry_after(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, queue_size=1, retry_after=3))
    try:
        pump.committing.clear()
        first = asyncio.create_task(post(source, {"text": "first"}))
        await asyncio.wait_for(pump.polled.wait(), 10)
        status, answer, headers = await post(source, {"text": "second"})
        assert (status, headers["Retry-After"]) == (503, "3") and "too many prompts" in answer["error"]
        assert fake.server.calls == 1  # the refused prompt cost no call
        pump.committing.set()
        assert (await asyncio.wait_for(first, 10))[0] == 200
    finally:
        await pump.close()
        await source.stop()


async def test_the_id_comes_from_idempotency_key_when_the_body_has_none(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    status, answer, _ = await post(source, {"text": "hi"}, {"Idempotency-Key": "delivery-7"})
    assert (status, answer["id"]) == (200, "delivery-7")
    assert [record.id for record in pump.seen] == ["delivery-7"]


async def test_event_data_is_prompt_text_only_never_model_or_options(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    status, answer, _ = await post(source, {"text": "hi", "model": "gpt-expensive", "base_url": "http://evil"})
    assert status == 400 and "unknown field(s) base_url, model" in answer["error"]
    assert fake.server.calls == 0 and pump.seen == []


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "invalid JSON"),
        ({"text": ""}, 400, "non-empty text"),
        ({"text": 3}, 400, "non-empty text"),
        ({"text": "x" * 101}, 413, "longer than max_prompt_chars"),
        ({"text": "x", "pad": "y" * 2000}, 413, "larger than max_body_bytes"),
        ({"text": "x", "id": 5}, 400, "id must be a text"),
    ],
)
async def test_bad_requests_are_refused_with_the_reason_and_cost_no_call(
    fake: FakeOpenAI, body: Any, status: int, reason: str
) -> None:
    source, pump = await started(config_for(fake, max_prompt_chars=100, max_body_bytes=1000))
    try:
        got_status, answer, _ = await post(source, body)
        assert got_status == status and reason in answer["error"]
        assert fake.server.calls == 0 and pump.seen == []
    finally:
        await pump.close()
        await source.stop()


async def test_a_sender_token_is_required_when_configured(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, token=SENDER_TOKEN))
    try:
        status, _, headers = await post(source, {"text": "hi"})
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer")
        assert (await post(source, {"text": "hi"}, {"Authorization": "Bearer wrong"}))[0] == 401
        assert fake.server.calls == 0
        assert (await post(source, {"text": "hi"}, {"Authorization": f"Bearer {SENDER_TOKEN}"}))[0] == 200
    finally:
        await pump.close()
        await source.stop()


async def test_a_request_head_not_sent_within_header_timeout_is_cut_off(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, header_timeout=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    writer.write(b"POST /chatgpt HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
    try:
        assert await until_closed(reader) == b""
        assert (await post(source, {"text": "still served"}))[0] == 200
    finally:
        writer.close()
        await pump.close()
        await source.stop()


async def test_a_body_not_sent_within_body_timeout_is_answered_408_long_before_response_timeout(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, body_timeout=0.5, response_timeout=600.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
    writer.write(b'POST /chatgpt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"te')
    try:
        answer = await until_closed(reader, within=20.0)  # response_timeout alone would answer after 600 s
        assert answer.startswith(b"HTTP/1.1 408 ") and b"body_timeout (0.5 s)" in answer
        assert fake.server.calls == 0
        assert (await post(source, {"text": "still served"}))[0] == 200
    finally:
        writer.close()
        await pump.close()
        await source.stop()


async def test_connections_beyond_max_connections_are_answered_503_and_the_others_served(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, max_connections=3, header_timeout=30.0))
    held = [await asyncio.open_connection("127.0.0.1", source.port) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", source.port)
        held.append((reader, writer))
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After" in answer
        for _, held_writer in held[:3]:
            held_writer.close()

        async def served() -> bool:  # the closes take a moment to reach the server
            return (await post(source, {"text": "after"}))[0] == 200

        await until(served, "a request served once the held connections closed")
    finally:
        for _, held_writer in held:
            held_writer.close()
        await pump.close()
        await source.stop()


async def test_a_port_in_use_is_a_config_error_naming_the_port(fake: FakeOpenAI) -> None:
    taken, pump = await started(config_for(fake))
    try:
        with pytest.raises(ConfigError, match="already in use") as info:
            await started(config_for(fake, port=taken.port))
        assert info.value.key == "config.port"
    finally:
        await pump.close()
        await taken.stop()


async def test_429_is_retried_after_the_retry_after_it_gives(fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]) -> None:
    source, pump = running
    rate_limited = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    fake.server.faults = [Canned(429, rate_limited, {"Retry-After": "1"}), PASS]
    began = time.monotonic()
    status, _, _ = await post(source, {"text": "hi", "id": "p-2"})
    assert status == 200 and fake.server.calls == 2
    assert fake.call_times[0] - began >= 0.9  # the backoff alone (0.01 s base) would have come back at once
    assert [record.id for record in pump.seen] == ["p-2"]


async def test_a_retry_after_longer_than_backoff_max_is_passed_to_the_sender(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    fake.server.faults = [Canned(429, {"error": {"message": "quota"}}, {"Retry-After": "60"})]
    status, answer, headers = await post(source, {"text": "hi"})
    assert (status, headers["Retry-After"]) == (503, "60")
    assert "answered 429" in answer["error"]
    assert fake.server.calls == 1 and pump.seen == []


async def test_5xx_and_dropped_connections_are_retried(fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]) -> None:
    source, pump = running
    fake.server.faults = [Canned(502), DROP, PASS]
    status, _, _ = await post(source, {"text": "hi", "id": "p-3"})
    assert status == 200 and fake.server.calls == 3
    assert [record.data["answer"] for record in pump.seen] == ["echo: hi"]  # type: ignore[call-overload]


async def test_a_lasting_5xx_is_503_to_the_sender_after_max_attempts(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump]
) -> None:
    source, pump = running
    fake.server.faults = [Canned(500), Canned(503), Canned(500), PASS]
    status, answer, headers = await post(source, {"text": "hi"})
    assert status == 503 and "answered 500" in answer["error"] and int(headers["Retry-After"]) >= 1
    assert fake.server.calls == 3 and pump.seen == []  # max_attempts, then nothing published


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Canned(200, {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}), "no text in choices[0].message.content"),
        (Canned(200, {"choices": [{"message": {"role": "assistant", "content": None}}]}), "no text in choices"),
        (Canned(200), "not JSON"),
        (Canned(400, {"error": {"message": "maximum context length exceeded"}}), "refused the prompt: HTTP 400"),
    ],
)
async def test_a_malformed_or_refused_answer_dead_letters_the_prompt_with_the_reason(
    fake: FakeOpenAI, running: tuple[ChatGptSource, Pump], fault: Canned, reason: str
) -> None:
    source, pump = running
    fake.server.faults = [fault]
    status, answer, _ = await post(source, {"text": "hi", "id": "p-4"})
    assert (status, answer) == (200, {"id": "p-4", "dead_lettered": True})
    assert fake.server.calls == 1  # retrying cannot help
    [record] = pump.seen
    assert record.refusal is not None and reason in record.refusal
    assert record.data == {"text": "hi"}


async def test_an_oversized_answer_is_dead_lettered_not_read_whole(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, max_response_bytes=1024))
    try:
        status, answer, _ = await post(source, {"text": "y" * 2000})
        assert (status, answer["dead_lettered"]) == (200, True)
        assert pump.seen[0].refusal is not None and "max_response_bytes" in pump.seen[0].refusal
    finally:
        await pump.close()
        await source.stop()


async def test_the_api_key_is_in_no_log_response_or_error(fake: FakeOpenAI) -> None:
    source, pump = await started(config_for(fake, api_key="sk-wrong-s3cret-key"))
    try:
        with capture_logs() as logs:
            fake.server.faults = [Canned(500), DROP]
            failing = await post(source, {"text": "hi"})
            wrong_key = await post(source, {"text": "hi"})
        assert failing[0] == 503 and wrong_key[0] == 503
        assert any("check api_key" in entry["event"] for entry in logs)
        for text in (repr(logs), repr(failing), repr(wrong_key), repr(source.config)):
            assert "sk-wrong-s3cret-key" not in text
    finally:
        await pump.close()
        await source.stop()
    with pytest.raises(ConfigError) as info:
        validate_model(ChatGptSourceConfig, {"api_key": "sk-wrong-s3cret-key", "base_url": "ftp://x"}, prefix="config")
    assert "base_url" in str(info.value) and "sk-wrong-s3cret-key" not in str(info.value)


def test_the_api_key_is_required() -> None:
    with pytest.raises(ConfigError, match="api_key"):
        validate_model(ChatGptSourceConfig, {}, prefix="config")


# -- end to end: the real worker, through the embedded mesh --------------------------------------


async def test_through_the_worker_answers_are_published_and_malformed_ones_dead_lettered(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    fake.server.faults = [PASS, Canned(500), Canned(200, {"choices": [{"message": {"content": 7}}]})]
    received = await through_the_worker(fake, tmp_path, 2, settings={"backoff_base": 0.01}, source={})
    [answer] = received["answers"]
    assert (answer.get_id(), answer.get_type(), answer.get_data()) == (
        "p-1",
        EVENT_TYPE,
        {"answer": "echo: prompt 1", "model": "gpt-4o-mini", "finish_reason": "stop"},
    )
    [dead] = received["chatgpt-answers-dlq"]
    assert dead.get_id() == "p-2" and "malformed answer" in str(dead.get_attributes()["dlqreason"])
    assert fake.server.calls == 3  # the 500 was retried once, the malformed answer not at all


async def test_chatgpt_source_conformance(fake: FakeOpenAI, tmp_path: Path) -> None:
    port = free_port()

    async def produce(start: int, count: int) -> None:
        async with aiohttp.ClientSession() as session:
            for n in range(start, start + count):
                for _ in range(100):  # the worker may still be starting: retry as a sender would
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{port}/chatgpt",
                            json={"text": f"item {n}", "id": f"item-{n}"},
                            timeout=aiohttp.ClientTimeout(total=30),
                        ) as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError(f"the chatgpt source never accepted item {n}")

    await run_source_conformance(
        SourceHarness(
            connector=ChatGptSource,
            config=lambda: {"host": "127.0.0.1", "port": port, "api_key": API_KEY, "base_url": fake.base_url},
            produce=produce,
            number_of=lambda event: int(event.get_data()["answer"].rsplit(" ", 1)[1]),  # type: ignore[call-overload, index]
            events=40,
        ),
        workdir=tmp_path,
        checks=("open_close", "batches", "redelivery", "mesh_drop"),  # a killed endpoint cannot take requests
    )
