"""parse_seed at scale and at its edges: big arrays, duplicate ids, the size limit, nesting, strict JSON."""

import json

import pytest

from frd_assets.core.records import MAX_SEED_BYTES, SeedFormatError, parse_seed


def alpaca(i: int, **extra) -> dict:
    return {"id": f"t{i}", "instruction": f"Say the number {i}.", "input": "", "output": str(i), **extra}


def as_jsonl(tasks) -> bytes:
    return "\n".join(json.dumps(t) for t in tasks).encode()


def as_array(tasks) -> bytes:
    return ("[\n" + ",\n".join(json.dumps(t) for t in tasks) + "\n]").encode()


def test_a_200000_task_json_array_parses_to_200000_records_with_their_lines():
    # Issue 10: this size ran past 300 s when every element counted newlines from the start of the text.
    n = 200_000
    data = as_array(alpaca(i) for i in range(n))
    assert len(data) < MAX_SEED_BYTES
    records = parse_seed(data, "big.json")
    assert len(records) == n
    assert (records[0].id, records[0].provenance["line"]) == ("t0", 2)
    assert (records[-1].id, records[-1].output, records[-1].provenance["line"]) == (f"t{n - 1}", str(n - 1), n + 1)


@pytest.mark.parametrize(
    "data, first, again",
    [
        (as_jsonl([alpaca(1), alpaca(2), alpaca(3, id="t1")]), 1, 3),
        (as_array([alpaca(1), alpaca(2), alpaca(3, id="t1")]), 2, 4),
        # A multi-instance task's second record ('a#1') against a task whose own id is 'a#1'.
        (as_jsonl([{"id": "a", "instruction": "x", "instances": [{"output": "1"}, {"output": "2"}]},
                   alpaca(9, id="a#1")]), 1, 2),
    ],
    ids=["jsonl", "json-array", "derived-id"],
)
def test_a_duplicate_id_names_the_line_where_it_was_first_seen_and_where_it_repeats(data, first, again):
    with pytest.raises(SeedFormatError) as err:
        parse_seed(data, "seeds/dup.json")
    assert err.value.line == again
    assert f"first on line {first}, again on line {again}" in str(err.value)
    assert str(err.value).startswith(f"seeds/dup.json line {again}: id '")


def test_a_seed_over_the_size_limit_is_refused_naming_its_size_the_limit_and_the_fix():
    data = b" " * (MAX_SEED_BYTES + 1)
    with pytest.raises(SeedFormatError) as err:
        parse_seed(data, "seeds/huge.jsonl")
    message = str(err.value)
    assert message.startswith("seeds/huge.jsonl: ")
    assert f"{MAX_SEED_BYTES + 1:,} bytes" in message and f"{MAX_SEED_BYTES:,} bytes" in message
    assert "split it" in message


def test_the_size_limit_admits_a_seed_of_exactly_the_limit():
    task = json.dumps(alpaca(0)).encode()
    data = task + b" " * (MAX_SEED_BYTES - len(task))
    assert len(data) == MAX_SEED_BYTES
    assert len(parse_seed(data, "edge.jsonl")) == 1


@pytest.mark.parametrize(
    "data, line",
    [
        (b"[" * 100_000, 1),
        (as_jsonl([alpaca(1)]) + b'\n{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 2),
        (as_array([alpaca(1)])[:-2] + b',\n{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n]", 3),
    ],
    ids=["bare-brackets", "jsonl-line", "array-element"],
)
def test_json_nested_too_deep_is_a_seed_format_error_naming_object_and_line(data, line):
    with pytest.raises(SeedFormatError) as err:
        parse_seed(data, "seeds/deep.json")
    assert err.value.line == line
    assert str(err.value).startswith(f"seeds/deep.json line {line}: invalid JSON: nested too deeply")


@pytest.mark.parametrize(
    "data, line, fragment",
    [
        (b'{"id": NaN, "instruction": "a", "output": "b"}', 1, "NaN is not JSON"),
        (b'[\n{"instruction": "a", "output": "b", "n": -Infinity}\n]', 2, "-Infinity is not JSON"),
        (b'[\n{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n]', 3, "expected ',' or ']'"),
        (b'[\n{"instruction": "a", "output": "b"},\n]', 3, "invalid JSON"),
        (b'[\n{"instruction": "a", "output": "b"}\n] trailing', 3, "after the closing ']'"),
        (b'[\n{"instruction": "a", "output": "b"},\n', 3, "not closed"),
    ],
    ids=["nan-jsonl", "infinity-array", "missing-comma", "trailing-comma", "trailing-text", "unclosed"],
)
def test_a_json_array_or_line_that_is_not_strict_json_names_its_line(data, line, fragment):
    with pytest.raises(SeedFormatError) as err:
        parse_seed(data, "s.json")
    assert err.value.line == line
    assert fragment in str(err.value)
