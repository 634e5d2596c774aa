"""EventMesh filter patterns and transformers: every condition and kind, bad rules, unreadable events.

The first rows of each table are the cases of EventMesh's own filter and transformer tests, on the
same events; the rest pin the text rules, the edges where this module departs from EventMesh's
runtime (documented in the module), and the errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import ConfigError, DataError
from runtime.transforms.eventmesh import compile_eventmesh_filter, compile_eventmesh_transformer

# The event of EventMesh's filter tests, plus fields for the edges.
FILTER_EVENT: dict[str, Any] = {
    "id": "4b26115b-73e-cf74a******",
    "specversion": "1.0",
    "source": "eventmesh.source",
    "type": "object:put",
    "datacontenttype": "application/json",
    "subject": "xxx.jpg",
    "time": "2022-01-17T12:07:48.955Z",
    "data": {
        "name": "test01",
        "state": "enable",
        "num": 10,
        "num1": 50.7,
        "text10": "10",
        "flag": True,
        "nothing": None,
        "big": 1e20,
        "zero": 0.0,
        "tags": ["a", "b"],
        "nums": [1, 5],
        "obj": {"k": "v"},
    },
}

FILTER_CASES: list[tuple[str, object, bool]] = [
    # EventMesh's own cases
    ("specified test: prefix on source", '{"source": [{"prefix": "eventmesh."}]}', True),
    ("prefix on source", {"source": [{"prefix": "eventmesh."}]}, True),
    ("suffix on subject", {"subject": [{"suffix": ".jpg"}]}, True),
    (
        "numeric range and equality",
        {"data": {"num": [{"numeric": [">", 0, "<=", 10]}], "num1": [{"numeric": ["=", 50.7]}]}},
        True,
    ),
    ("exists false on a present field", {"data": {"state": [{"exists": False}]}}, False),
    ("anything-but the value it has", {"data": {"state": [{"anything-but": "enable"}]}}, False),
    # specified values compare as EventMesh's text of the field
    ("bare value equal", {"data": {"name": ["test01"]}}, True),
    ("bare value different", {"data": {"name": ["test02"]}}, False),
    ("specified object", {"data": {"state": [{"specified": "enable"}]}}, True),
    ("specified object different", {"data": {"state": [{"specified": "disable"}]}}, False),
    ("text matches an integer", {"data": {"num": ["10"]}}, True),
    ("integer matches text", {"data": {"text10": [10]}}, True),
    ("10.0 is not the text of 10", {"data": {"num": [10.0]}}, False),
    ("double written as Java does", {"data": {"big": ["1.0E20"]}}, True),
    ("double in Python's spelling does not match", {"data": {"big": ["1e+20"]}}, False),
    ("boolean as text", {"data": {"flag": ["true"]}}, True),
    ("null matches a null field", {"data": {"nothing": [None]}}, True),
    ("null matches an absent field", {"data": {"absent": [None]}}, True),
    ("null does not match a value", {"data": {"state": [None]}}, False),
    ("absent attribute reads as null", {"dataschema": [None]}, True),
    ("absent attribute is not a value", {"dataschema": ["x"]}, False),
    # prefix and suffix
    ("prefix that is not there", {"source": [{"prefix": "mesh"}]}, False),
    ("suffix that is not there", {"subject": [{"suffix": ".png"}]}, False),
    ("numeric prefix on a number's text", {"data": {"num": [{"prefix": 1}]}}, True),
    ("objects read as empty text", {"data": {"obj": [{"prefix": "k"}]}}, False),
    ("objects equal the empty text", {"data": {"obj": [""]}}, True),
    # numeric
    ("numeric below fails", {"data": {"num": [{"numeric": ["<", 10]}]}}, False),
    ("numeric at bound", {"data": {"num": [{"numeric": [">=", 10]}]}}, True),
    ("numeric above bound excludes it", {"data": {"num": [{"numeric": [">", 10]}]}}, False),
    ("numeric not equal fails", {"data": {"num1": [{"numeric": ["!=", 50.7]}]}}, False),
    ("numeric not equal holds", {"data": {"num1": [{"numeric": ["!=", 50]}]}}, True),
    ("numeric every pair must hold", {"data": {"num": [{"numeric": [">", 0, "<", 5]}]}}, False),
    ("numeric -0.0 is not 0 as Java compares", {"data": {"zero": [{"numeric": ["=", -0.0]}]}}, False),
    ("numeric 0 equals 0.0", {"data": {"zero": [{"numeric": ["=", 0]}]}}, True),
    ("numeric never holds for text", {"data": {"text10": [{"numeric": [">", 0]}]}}, False),
    ("numeric never holds for an absent field", {"data": {"absent": [{"numeric": [">", 0]}]}}, False),
    ("numeric never holds for a boolean", {"data": {"flag": [{"numeric": [">", 0]}]}}, False),
    # exists
    ("exists true on a present field", {"data": {"state": [{"exists": True}]}}, True),
    ("exists true on an absent field", {"data": {"absent": [{"exists": True}]}}, False),
    ("exists false on an absent field", {"data": {"absent": [{"exists": False}]}}, True),
    ("a null field exists", {"data": {"nothing": [{"exists": True}]}}, True),
    ("exists on a nested absent field", {"data": {"obj": {"absent": [{"exists": False}]}}}, True),
    # anything-but
    ("anything-but another value", {"data": {"state": [{"anything-but": "disable"}]}}, True),
    ("anything-but a list holding it", {"data": {"state": [{"anything-but": ["stopped", "enable"]}]}}, False),
    ("anything-but a list without it", {"data": {"state": [{"anything-but": ["stopped", "overloaded"]}]}}, True),
    ("anything-but a number", {"data": {"num": [{"anything-but": 123}]}}, True),
    ("anything-but values are whole values", {"data": {"state": [{"anything-but": ["en"]}]}}, True),
    ("anything-but its prefix", {"data": {"state": [{"anything-but": {"prefix": "en"}}]}}, False),
    ("anything-but another suffix", {"data": {"state": [{"anything-but": {"suffix": "x"}}]}}, True),
    ("anything-but a numeric range it is in", {"data": {"num": [{"anything-but": {"numeric": [">", 5]}}]}}, False),
    ("anything-but of an absent field", {"data": {"absent": [{"anything-but": "x"}]}}, True),
    # combining
    ("one of a field's conditions", {"data": {"state": ["x", "enable"]}}, True),
    ("none of a field's conditions", {"data": {"state": ["x", {"prefix": "dis"}]}}, False),
    ("every field must match", {"source": [{"prefix": "eventmesh."}], "data": {"state": ["disable"]}}, False),
    ("attributes and data together", {"type": ["object:put"], "data": {"num": [{"numeric": ["=", 10]}]}}, True),
    ("nested data fields", {"data": {"obj": {"k": ["v"]}}}, True),
    ("nested data field different", {"data": {"obj": {"k": ["w"]}}}, False),
    ("a path through a non-object is absent", {"data": {"state": {"deeper": [{"exists": False}]}}}, True),
    ("the empty pattern passes all", {}, True),
    ("the empty data pattern passes all", {"data": {}}, True),
    # list-valued fields: one element suffices, and the field is one among the others
    ("list field with a matching element", {"data": {"tags": ["b"]}}, True),
    ("list field without one", {"data": {"tags": ["c"]}}, False),
    ("list field does not excuse a failing field", {"data": {"tags": ["b"], "state": ["zzz"]}}, False),
    ("failing list field fails the event", {"data": {"tags": ["c"], "state": ["enable"]}}, False),
    ("numeric on list elements", {"data": {"nums": [{"numeric": [">", 3]}]}}, True),
    ("anything-but on list elements", {"data": {"tags": [{"anything-but": "a"}]}}, True),
    ("exists looks at the list itself", {"data": {"tags": [{"exists": True}]}}, True),
]


@pytest.mark.parametrize(
    ("rule", "expected"), [(rule, expected) for _, rule, expected in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
def test_filter_matches_as_the_pattern_says(rule: Any, expected: bool) -> None:
    assert compile_eventmesh_filter(rule)(FILTER_EVENT) is expected


def test_filter_reads_a_timestamp_as_the_structured_event_writes_it() -> None:
    event = {**FILTER_EVENT, "time": datetime(2022, 1, 17, 12, 7, 48, 955000, tzinfo=UTC)}
    assert compile_eventmesh_filter({"time": [{"prefix": "2022-01-17T12:07:48.955"}]})(event) is True
    assert compile_eventmesh_filter({"time": [{"suffix": "Z"}]})(event) is True
    assert compile_eventmesh_filter({"time": [{"prefix": "2022-01-18"}]})(event) is False


def test_json_text_and_parsed_rules_agree() -> None:
    for name, rule, expected in FILTER_CASES:
        text = rule if isinstance(rule, str) else json.dumps(rule)
        assert compile_eventmesh_filter(text)(FILTER_EVENT) is expected, name


BAD_FILTERS: list[tuple[str, object, str, str]] = [
    ("not JSON", "not json", "filter", "is not valid JSON: Expecting value at line 1 column 1"),
    ("JSON and more", '{"source": ["a"]} x', "filter", "is not valid JSON: Extra data"),
    ("a key twice", '{"source": ["a"], "source": ["b"]}', "filter", "'source' appears twice"),
    ("NaN in the rule", '{"data": {"num": [{"numeric": [">", NaN]}]}}', "filter", "NaN is not a JSON number"),
    ("not an object", "[]", "filter", "is a JSON object, not []"),
    ("an extension", {"foo": ["x"]}, "filter.foo", "'foo' is not a CloudEvents attribute"),
    (
        "attribute without a list",
        {"source": "x"},
        "filter.source",
        'conditions are a list, not "x"; fix: wrap it in a list: ["x"]',
    ),
    ("empty list", {"source": []}, "filter.source", "the list of conditions is empty"),
    ("data not an object", {"data": "x"}, "filter.data", "data takes an object of data fields"),
    ("data leaf without a list", {"data": {"state": "enable"}}, "filter.data.state", "conditions are a list"),
    ("empty condition object", {"data": {"state": [{}]}}, "filter.data.state[0]", "exactly one key, this one has 0"),
    ("two conditions in one object", {"data": {"state": [{"prefix": "a", "suffix": "b"}]}}, "filter.data.state[0]", "has 2"),
    ("list in a list", {"data": {"state": [[1]]}}, "filter.data.state[0]", "a condition is a value or an object, not [1]"),
    (
        "unknown condition",
        {"data": {"state": [{"contains": "x"}]}},
        "filter.data.state[0].contains",
        "'contains' is not an EventMesh condition",
    ),
    ("numeric not a list", {"data": {"num": [{"numeric": ">"}]}}, "filter.data.num[0].numeric", "operator and number pairs"),
    (
        "numeric odd length",
        {"data": {"num": [{"numeric": [">", 1, "<"]}]}},
        "filter.data.num[0].numeric",
        "operator and number pairs",
    ),
    ("numeric empty", {"data": {"num": [{"numeric": []}]}}, "filter.data.num[0].numeric", "non-empty list"),
    (
        "numeric operator",
        {"data": {"num": [{"numeric": ["~", 1]}]}},
        "filter.data.num[0].numeric[0]",
        '"~" is not a numeric operator',
    ),
    ("numeric operator a list", {"data": {"num": [{"numeric": [[">"], 1]}]}}, "filter.data.num[0].numeric[0]", '[">"] is not'),
    (
        "numeric bound as text",
        {"data": {"num": [{"numeric": [">", "5"]}]}},
        "filter.data.num[0].numeric[1]",
        '"5" is not a number',
    ),
    (
        "numeric bound boolean",
        {"data": {"num": [{"numeric": [">", True]}]}},
        "filter.data.num[0].numeric[1]",
        "true is not a number",
    ),
    (
        "exists not a boolean",
        {"data": {"state": [{"exists": "yes"}]}},
        "filter.data.state[0].exists",
        'takes true or false, not "yes"',
    ),
    ("prefix of null", {"data": {"state": [{"prefix": None}]}}, "filter.data.state[0].prefix", "takes a text or a number"),
    ("suffix of an object", {"data": {"state": [{"suffix": {}}]}}, "filter.data.state[0].suffix", "takes a text or a number"),
    ("anything-but nothing", {"data": {"state": [{"anything-but": []}]}}, "filter.data.state[0].anything-but", "non-empty list"),
    (
        "anything-but exists",
        {"data": {"state": [{"anything-but": {"exists": True}}]}},
        "filter.data.state[0].anything-but.exists",
        "exists cannot",
    ),
    (
        "anything-but nested list",
        {"data": {"state": [{"anything-but": [["a"]]}]}},
        "filter.data.state[0].anything-but[0]",
        "lists values",
    ),
    ("dotted field name", {"data": {"a.b": ["x"]}}, "filter.data.a.b", "holds JSONPath syntax"),
    ("wildcard field name", {"data": {"*": ["x"]}}, "filter.data.*", "holds JSONPath syntax"),
]


@pytest.mark.parametrize(("rule", "key", "message"), [c[1:] for c in BAD_FILTERS], ids=[c[0] for c in BAD_FILTERS])
def test_bad_filter_is_a_config_error_naming_the_place(rule: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_eventmesh_filter(rule)
    assert caught.value.key == key
    assert message in str(caught.value)
    assert caught.value.fix


def test_the_config_key_given_prefixes_the_pointer() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_eventmesh_filter({"data": {"num": [{"numeric": ["~", 1]}]}}, key="transforms[2].filter")
    assert caught.value.key == "transforms[2].filter.data.num[0].numeric[0]"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (["not", "a", "mapping"], "the EventMesh filter got a list, not a CloudEvent mapping"),
        ({**FILTER_EVENT, "data": {"state": b"enable"}}, "event field data.state holds a bytes, which is not a JSON value"),
        ({**FILTER_EVENT, "source": object()}, "event field source holds a object"),
        ({**FILTER_EVENT, "data": {"state": 10**5000}}, "event field data.state holds an integer too long"),
    ],
)
def test_unreadable_event_is_a_data_error(event: Any, message: str) -> None:
    event_filter = compile_eventmesh_filter({"source": [{"prefix": "eventmesh."}], "data": {"state": ["enable"]}})
    with pytest.raises(DataError) as caught:
        event_filter(event)
    assert message in caught.value.reason


# The event of EventMesh's transformer tests, plus fields for the edges.
TRANSFORM_EVENT: dict[str, Any] = {
    "id": "5b26115b-73e-cf74a******",
    "specversion": "1.0",
    "source": "apache.eventmesh",
    "type": "object:test",
    "datacontenttype": "application/json",
    "subject": "xxx.jpg",
    "time": "2023-09-17T12:07:48.955Z",
    "data": {
        "name": "test-transformer",
        "num": 100,
        "boolean": True,
        "nullV": None,
        "obj": {"k": "v", "n": [1, "two", None]},
        "big": 1e20,
        "a b": "spaced",
        "sneaky": "${name} $${name}",
    },
}

TEMPLATE = "Transformers test:data name is ${data-name}"
TEMPLATE_CASES: list[tuple[str, object, str, str]] = [
    # EventMesh's own cases
    ("string value", '{"data-name": "$.data.name"}', TEMPLATE, "Transformers test:data name is test-transformer"),
    ("map value", {"data-name": "$.data.name"}, TEMPLATE, "Transformers test:data name is test-transformer"),
    ("no variables", "{}", "data num is ${data-num}", "data num is ${data-num}"),
    ("no match", '{"data-num": "$.data.no"}', "data num is ${data-num}", "data num is null"),
    ("number", '{"data-num": "$.data.num"}', "data num is ${data-num}", "data num is 100"),
    ("null value", '{"data-null": "$.data.nullV"}', "data null is ${data-null}", "data null is null"),
    ("boolean", '{"boolean": "$.data.boolean"}', "data boolean is ${boolean}", "data boolean is true"),
    (
        "constant beside a path",
        '{"name": "$.data.name", "constant": "constant"}',
        "data name is ${name}, constant is ${constant}",
        "data name is test-transformer, constant is constant",
    ),
    # what a path finds, written as Java writes it
    ("object and list", {"v": "$.data.obj"}, "${v}", "{k=v, n=[1, two, null]}"),
    ("list element", {"v": "$.data.obj.n[1]"}, "${v}", "two"),
    ("last element", {"v": "$.data.obj.n[-1]"}, "${v}", "null"),
    ("double", {"v": "$.data.big"}, "${v}", "1.0E20"),
    ("bracket notation", {"v": "$['data']['a b']"}, "${v}", "spaced"),
    ("attribute", {"v": "$.source"}, "${v}", "apache.eventmesh"),
    ("past the end of a list", {"v": "$.data.obj.n[9]"}, "${v}", "null"),
    ("through a text", {"v": "$.data.name.deeper"}, "${v}", "null"),
    # what is not a definite path is the text itself
    ("wildcard is text", {"v": "$.data.*"}, "${v}", "$.data.*"),
    ("deep scan is text", {"v": "$..name"}, "${v}", "$..name"),
    ("filter is text", {"v": "$.data[?(@.k)]"}, "${v}", "$.data[?(@.k)]"),
    ("invalid path is text", {"v": "$.data."}, "${v}", "$.data."),
    ("dollar word is text", {"v": "$data"}, "${v}", "$data"),
    ("space between segments is text", {"v": "$.data .name"}, "${v}", "$.data .name"),
    ("space after the root is text", {"v": "$ .data.name"}, "${v}", "$ .data.name"),
    ("space inside brackets is a path", {"v": "$[ 'data' ][ 'a b' ]"}, "${v}", "spaced"),
    ("quoted bracket and space is a path", {"v": "$['data']['a b']"}, "${v}", "spaced"),
    ("space at the end is a path", {"v": "$.data.name "}, "${v}", "test-transformer"),
    ("number constant", '{"v": 5}', "${v}", "5"),
    ("null constant", '{"v": null}', "${v}", "null"),
    # Commons Text templates
    ("escaped reference", {"v": "$.data.name"}, "$${v} ${v}", "${v} test-transformer"),
    ("three dollars", {"v": "$.data.name"}, "$$${v}", "$${v}"),
    ("default unused", {"v": "$.data.name"}, "${v:-d}", "test-transformer"),
    ("default used", {"v": "$.data.name"}, "${w:-dflt}", "dflt"),
    ("a colon alone is part of the name", {"a:b": "$.data.name"}, "${a:b}", "test-transformer"),
    ("a reference ends at the first brace", {"v": "$.data.name"}, "${w:-d${v}}", "d${v}"),
    ("unknown stays", {"v": "$.data.name"}, "${w} ${v ${} $ $$ ${v", "${w} ${v ${} $ $$ ${v"),
    ("twice", {"v": "$.data.num"}, "${v}${v}", "100100"),
    ("constant is a template", {"v": "$.data.name", "w": "x${v}"}, "${w}", "xtest-transformer"),
    ("escape inside a constant", {"w": "$${v}"}, "${w}", "${v}"),
    ("event text is not a template", {"v": "$.data.sneaky", "name": "secret"}, "${v}", "${name} $${name}"),
]


@pytest.mark.parametrize(("value", "template", "expected"), [c[1:] for c in TEMPLATE_CASES], ids=[c[0] for c in TEMPLATE_CASES])
def test_template_transformer_fills_the_template(value: object, template: str, expected: str) -> None:
    transformer = compile_eventmesh_transformer({"transformerType": "template", "value": value, "template": template})
    assert transformer(TRANSFORM_EVENT) == expected


def test_template_reads_a_timestamp_as_the_structured_event_writes_it() -> None:
    transformer = compile_eventmesh_transformer({"transformerType": "template", "value": {"t": "$.time"}, "template": "at ${t}"})
    event = {**TRANSFORM_EVENT, "time": datetime(2023, 9, 17, 12, 7, 48, tzinfo=UTC)}
    assert transformer(event) == "at 2023-09-17T12:07:48Z"


def test_original_transformer_gives_the_event_as_jackson_writes_it() -> None:
    transformer = compile_eventmesh_transformer({"transformerType": "original"})
    output = transformer(TRANSFORM_EVENT)
    assert json.loads(output) == TRANSFORM_EVENT
    small = {"id": "1", "data": {"big": 1e20, "text": "é"}}
    assert transformer(small) == '{"id":"1","data":{"big":1.0E20,"text":"é"}}'


def test_original_transformer_writes_a_timestamp_as_the_structured_event_does() -> None:
    transformer = compile_eventmesh_transformer({"transformerType": "original"})
    event = {"id": "1", "time": datetime(2023, 9, 17, 12, 7, 48, tzinfo=UTC)}
    assert transformer(event) == '{"id":"1","time":"2023-09-17T12:07:48Z"}'


def test_constant_transformer_gives_the_constant() -> None:
    transformer = compile_eventmesh_transformer({"transformerType": "constant", "value": "constant test"})
    assert transformer(TRANSFORM_EVENT) == "constant test"


BAD_TRANSFORMERS: list[tuple[str, object, str, str]] = [
    ("not an object", ["original"], "transformer", "is an object"),
    ("no type", {}, "transformer.transformerType", "null is not an EventMesh transformer type"),
    ("value is not a type", {"transformerType": "value", "value": "x"}, "transformer.transformerType", '"value" is not'),
    ("upper case type", {"transformerType": "TEMPLATE"}, "transformer.transformerType", "(lower case)"),
    ("unknown key", {"transformerType": "original", "type": "x"}, "transformer.type", "is not a key"),
    ("original with a value", {"transformerType": "original", "value": "x"}, "transformer.value", "takes no value"),
    ("constant without value", {"transformerType": "constant"}, "transformer.value", "needs value"),
    ("constant not text", {"transformerType": "constant", "value": 5}, "transformer.value", "the constant is text, not 5"),
    ("template without template", {"transformerType": "template", "value": "{}"}, "transformer.template", "needs template"),
    ("template not text", {"transformerType": "template", "value": "{}", "template": 1}, "transformer.template", "is text"),
    (
        "value not JSON",
        {"transformerType": "template", "value": "not json", "template": ""},
        "transformer.value",
        "not valid JSON",
    ),
    (
        "value a list",
        {"transformerType": "template", "value": "[]", "template": ""},
        "transformer.value",
        "a JSON object, not []",
    ),
    (
        "variable an object",
        {"transformerType": "template", "value": {"v": {"a": 1}}, "template": ""},
        "transformer.value.v",
        "not {",
    ),
    (
        "JSONPath function",
        {"transformerType": "template", "value": {"v": "$.data.obj.n.length()"}, "template": "${v}"},
        "transformer.value.v",
        "calls a JSONPath function",
    ),
    (
        "variables in a loop",
        {"transformerType": "template", "value": {"a": "x${b}", "b": "y${a}"}, "template": "${a}"},
        "transformer.template",
        "a loop: a -> b -> a",
    ),
    (
        "variable referring to itself",
        {"transformerType": "template", "value": {"a": "<${a}>"}, "template": "${a}"},
        "transformer.template",
        "a loop: a -> a",
    ),
    (
        "exponential constants",
        {
            "transformerType": "template",
            "value": {f"c{i}": f"${{c{i + 1}}}${{c{i + 1}}}" for i in range(20)},
            "template": "${c0}",
        },
        "transformer.template",
        "more than 10000 pieces",
    ),
]


@pytest.mark.parametrize(("spec", "key", "message"), [c[1:] for c in BAD_TRANSFORMERS], ids=[c[0] for c in BAD_TRANSFORMERS])
def test_bad_transformer_is_a_config_error_naming_the_place(spec: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_eventmesh_transformer(spec)
    assert caught.value.key == key
    assert message in str(caught.value)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    ("spec", "event", "message"),
    [
        ({"transformerType": "original"}, "a string", "the EventMesh original transformer got a str"),
        ({"transformerType": "original"}, {"data": {"tags": {"a", "b"}}}, "event field event.data.tags holds a set"),
        ({"transformerType": "original"}, {"data": {1: "x"}}, "has a key 1 that is not text"),
        ({"transformerType": "original"}, {"data": _nested(300)}, "nests deeper than 256 levels"),
        ({"transformerType": "original"}, {"data": {"n": 10**5000}}, "event field event.data.n holds an integer too long"),
        ({"transformerType": "template", "value": {"v": "$.data"}, "template": "${v}"}, {"data": _nested(300)}, "nests deeper"),
        (
            {"transformerType": "template", "value": {"v": "$.data.x"}, "template": "${v}"},
            {"data": {"x": b"raw"}},
            "event field $.data.x holds a bytes",
        ),
    ],
)
def test_unreadable_event_is_a_data_error_for_transformers(spec: Mapping[str, object], event: Any, message: str) -> None:
    transformer = compile_eventmesh_transformer(spec)
    with pytest.raises(DataError) as caught:
        transformer(event)
    assert message in caught.value.reason


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["k", "num", "state", "x"]), children, max_size=4)
    ),
    max_leaves=20,
)
_EVENTS = st.fixed_dictionaries(
    {"id": st.text(max_size=4), "source": _JSON_VALUES},
    optional={"subject": _JSON_VALUES, "data": _JSON_VALUES},
)
_ANY_EVENT_FILTER = compile_eventmesh_filter(
    {
        "source": ["a", {"prefix": "a"}, {"anything-but": {"suffix": "z"}}],
        "subject": [{"exists": False}, {"numeric": [">", 0]}],
        "data": {"num": [{"numeric": [">=", -1.5, "<", 1e9]}, None], "x": {"k": [{"anything-but": [1, "b"]}]}},
    }
)
_ANY_EVENT_TEMPLATE = compile_eventmesh_transformer(
    {
        "transformerType": "template",
        "value": {"a": "$.data", "b": "$.data.x.k", "c": "$.data[0]", "d": "$.source[-1]", "e": "$.data.*"},
        "template": "${a}|${b}|${c}|${d}|${e}|${f:-none}",
    }
)


@settings(max_examples=150, deadline=None)
@given(_EVENTS)
def test_any_json_event_is_filtered_and_transformed_without_error(event: dict[str, Any]) -> None:
    assert isinstance(_ANY_EVENT_FILTER(event), bool)
    text = _ANY_EVENT_TEMPLATE(event)
    assert text.endswith("|$.data.*|none")
    assert json.loads(compile_eventmesh_transformer({"transformerType": "original"})(event)) == event
