import json

import pytest

from frd_assets.core.records import (
    Record,
    SeedFormatError,
    dumps_jsonl,
    loads_jsonl,
    loads_strict_json,
    parse_seed,
)

SELF_INSTRUCT = {
    "id": "t1",
    "instruction": "Add the numbers.",
    "instances": [{"input": "2 and 3", "output": "5"}],
    "is_classification": False,
}
ALPACA = {"instruction": "Name a fruit.", "input": "", "output": "Apple"}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
    ]
}


def jsonl(*objs) -> bytes:
    return "\n".join(json.dumps(o) for o in objs).encode()


def test_three_formats_in_jsonl_normalise_to_canonical_records():
    records = parse_seed(jsonl(SELF_INSTRUCT, ALPACA, CHAT), "seeds/x.jsonl")
    assert [(r.instruction, r.input, r.output) for r in records] == [
        ("Add the numbers.", "2 and 3", "5"),
        ("Name a fruit.", "", "Apple"),
        ("Say hi.", "", "Hi."),
    ]
    assert [r.provenance["format"] for r in records] == ["self_instruct", "alpaca", "chat"]
    assert records[0].provenance == {
        "format": "self_instruct",
        "object": "seeds/x.jsonl",
        "line": 1,
        "is_classification": False,
    }
    assert len({r.id for r in records}) == 3


def test_json_array_gives_the_same_records_with_line_numbers():
    text = "[\n" + ",\n".join(json.dumps(o) for o in (SELF_INSTRUCT, ALPACA)) + "\n]"
    records = parse_seed(text.encode(), "a.json")
    assert [r.instruction for r in records] == ["Add the numbers.", "Name a fruit."]
    assert [r.provenance["line"] for r in records] == [2, 3]


def test_multi_instance_and_multi_turn_records_keep_every_pair():
    task = {**SELF_INSTRUCT, "instances": [{"input": "1", "output": "a"}, {"input": "2", "output": "b"}]}
    chat = {
        "id": "c",
        "messages": [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"},
        ],
    }
    records = parse_seed(jsonl(task, chat), "s.jsonl")
    assert [r.id for r in records] == ["t1#0", "t1#1", "c", "c#1"]


@pytest.mark.parametrize(
    "data, line, fragment",
    [
        (jsonl(ALPACA) + b"\n{not json", 2, "invalid JSON"),
        (jsonl(ALPACA, {"instruction": "x"}), 2, "unknown seed format"),
        (jsonl({"instruction": "x", "output": 3}), 1, "field 'output' must be a string"),
        (jsonl({"instruction": "  ", "output": "y"}), 1, "field 'instruction' is empty"),
        (jsonl({"instruction": "x", "instances": []}), 1, "'instances' must be a non-empty list"),
        (jsonl({"messages": [{"role": "user", "content": "only a question"}]}), 1, "needs a 'user' message"),
        (jsonl(ALPACA) + b"\n[1, 2]", 2, "expected a JSON object"),
        (b'{"instruction": "caf\xe9", "output": "x"}', 1, "not UTF-8"),
        (b'[{"instruction": "a", "output": "b"},\n {"instruction": ', 2, "invalid JSON"),
    ],
)
def test_bad_upload_names_object_line_and_reason(data, line, fragment):
    with pytest.raises(SeedFormatError) as err:
        parse_seed(data, "seeds/bad.jsonl")
    assert err.value.line == line
    assert str(err.value).startswith(f"seeds/bad.jsonl line {line}: ")
    assert fragment in str(err.value)


@pytest.mark.parametrize("data", [b"", b"\n  \n", b"[]"])
def test_empty_upload_is_rejected(data):
    with pytest.raises(SeedFormatError, match="seeds/e.jsonl: .*(empty|no tasks)"):
        parse_seed(data, "seeds/e.jsonl")


def test_duplicate_ids_are_rejected():
    with pytest.raises(SeedFormatError, match="id 'same' appears more than once"):
        parse_seed(jsonl({**ALPACA, "id": "same"}, {**ALPACA, "id": "same"}), "d.jsonl")


def test_jsonl_round_trip_is_utf8_and_lossless():
    rows = [Record("1", "Übersetze", "", "日本語", {"k": 1}).to_dict()]
    data = dumps_jsonl(rows)
    assert "日本語" in data.decode("utf-8")
    assert loads_jsonl(data, "x") == rows


def test_sample_seed_parses(sample_seed_bytes):
    records = parse_seed(sample_seed_bytes, "sample_seed.jsonl")
    assert len(records) >= 12


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("NaN", "NaN is not JSON"),
        ('{"x": Infinity}', "Infinity is not JSON"),
        ("[-Infinity]", "-Infinity is not JSON"),
        ("[" * 100_000, "nested too deeply"),
        ("{'single': 'quotes'}", "Expecting property name"),
    ],
)
def test_strict_json_raises_value_error_for_everything_that_is_not_json(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        loads_strict_json(text)


def test_strict_json_reads_what_json_reads():
    text = '{"a": [1, 2.5, -3e-7, 1e400, null, true, "NaN"]}'
    assert loads_strict_json(text) == json.loads(text)


def test_loads_jsonl_names_the_line_nested_too_deeply():
    with pytest.raises(ValueError, match="^x line 2: invalid JSON: nested too deeply"):
        loads_jsonl(b'{"a": 1}\n' + b"[" * 100_000, "x")
