"""`meshconnect protocol encode|decode` as a subprocess over every vector."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from runtime.protocol import jackson
from tests.protocol.vectors import MALFORMED, VALID, expected_outcome


def run(action: str, lines: list[str]) -> list[str]:
    completed = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "protocol", action],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout.removesuffix("\n").split("\n")  # not splitlines(): U+2028 is inside lines


def _jackson_text(value: Any) -> str:
    return jackson.dumps(value).decode()


def header_view(header: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if header is None else {key: header.get(key) for key in ("cmd", "code", "desc", "seq", "properties")}


def test_encode_every_valid_vector_from_body_text_and_from_body() -> None:
    from_text = [json.dumps({"header": vector["header"], "body_text": vector["body_text"]}) for vector in VALID]
    # With "body", a JSON value is written like Jackson: only vectors whose body is Jackson JSON apply.
    json_bodies = [
        vector for vector in VALID if vector["body"] is not None and vector["body_text"] == _jackson_text(vector["body"])
    ]
    from_json = [json.dumps({"header": vector["header"], "body": vector["body"]}) for vector in json_bodies]
    output = run("encode", [*from_text, *from_json, "not json", '{"header": 5}'])
    assert output[: len(VALID)] == [vector["frame_hex"] for vector in VALID]
    for line, vector in zip(output[len(VALID) : -2], json_bodies, strict=True):
        assert line == vector["frame_hex"], vector["name"]
    assert all("error" in json.loads(line) for line in output[-2:])


def test_decode_every_vector_like_java() -> None:
    vectors = VALID + MALFORMED
    output = run("decode", [vector["frame_hex"] for vector in vectors] + ["zz", "45"])
    assert len(output) == len(vectors) + 2
    for line, vector in zip(output, vectors, strict=False):
        result = json.loads(line)
        verdict = expected_outcome(vector)
        assert [header_view(p["header"]) for p in result["packages"]] == [
            header_view(p["header"]) for p in verdict["packages"]
        ], vector["name"]
        assert (result["error"] is not None) == (verdict["outcome"] == "error"), vector["name"]
        if verdict["outcome"] != "error":
            assert result["unconsumed_bytes"] == verdict["unconsumed_bytes"], vector["name"]
        for package, expected in zip(result["packages"], verdict["packages"], strict=True):
            if expected["body_java_type"] == "String":
                assert package["body_text"] == expected["body"]
            elif expected["body"] is None:
                assert package["body_text"] is None
    for vector in VALID:
        line = json.loads(output[VALID.index(vector)])
        if vector["body_text"] and line["packages"][0]["body_text"] is not None:
            assert line["packages"][0]["body_text"] == vector["body_text"]
    assert json.loads(output[-2])["error"].startswith("input is not hex")
    assert json.loads(output[-1]) == {"packages": [], "error": None, "unconsumed_bytes": 1}
