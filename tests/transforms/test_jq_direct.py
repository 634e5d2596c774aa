"""jq programs that only select and assemble run in Python: the same results and errors as jq itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import DataError
from runtime.transforms.jq import JqProgram

NAMES = st.sampled_from(["a", "b", "n", "payload", "x_1", "and"])
PATHS = st.one_of(st.just("."), st.lists(NAMES, min_size=1, max_size=3).map(lambda names: "." + ".".join(names)))
LITERALS = st.sampled_from(['"bench"', "0", "-7", "123456789012345", "true", "false", "null", '""'])
ENTRIES = st.one_of(
    NAMES,
    st.tuples(st.one_of(NAMES, NAMES.map(lambda name: f'"{name} x"')), st.one_of(PATHS, LITERALS)).map(
        lambda pair: f"{pair[0]}: {pair[1]}"
    ),
)
PROGRAMS = st.one_of(PATHS, st.lists(ENTRIES, min_size=1, max_size=4).map(lambda entries: "{" + ", ".join(entries) + "}"))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
KEYS = st.one_of(NAMES, st.text(max_size=5))
DATA = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=20
)


def outcome(program: JqProgram, data: Any) -> tuple[str, Any]:
    """The result as JSON text, which tells 1 from 1.0 (Python holds them equal), or the error."""
    try:
        return "value", json.dumps(program(data))
    except DataError as exc:
        return "error", exc.reason


@settings(max_examples=400, deadline=None)
@given(PROGRAMS, DATA)
def test_a_program_run_in_python_gives_what_jq_gives(text: str, data: Any) -> None:
    direct = JqProgram(text, key="map")
    through_jq = JqProgram(text, key="map", direct=False)
    assert outcome(direct, data) == outcome(through_jq, data)


@pytest.mark.parametrize("text", ['{n, payload, kind: "bench"}', ".", ".after.id", '{"a b": .x, n: 1}'])
def test_programs_that_select_and_assemble_run_without_jq(text: str) -> None:
    assert JqProgram(text, key="map")._direct is not None


@pytest.mark.parametrize("text", [".a | .b", ".a[0]", "{(.a): 1}", ".a?", "..", '{a: "\\(.b)"}', "{a: 1.5}", "{if}", ". + {a}"])
def test_every_other_program_is_left_to_jq(text: str) -> None:
    assert JqProgram(text, key="map")._direct is None


def test_integers_stay_exact_where_jq_would_round_them() -> None:
    assert JqProgram("{id}", key="map")({"id": 2**53 + 1}) == {"id": 2**53 + 1}
    assert JqProgram("{id}", key="map", direct=False)({"id": 2**53 + 1}) == {"id": 2**53}
