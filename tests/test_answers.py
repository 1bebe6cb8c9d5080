"""JSON answers: the training target format and the strict/lenient parsing of model output."""

import json
import random
import re
import time

import pytest

from llama_squad.answers import (
    NO_ANSWER,
    ParsedAnswer,
    ParsedOutput,
    format_json_answer,
    parse_json_answer,
    parse_json_output,
)

# (raw model output, expected answer, expected valid_json)
ANSWER_CASES = [
    # strict: exactly one JSON object, optionally fenced, surrounding whitespace allowed
    ('{"answer": "Paris"}', "Paris", True),
    ('  \n{"answer": "Paris"}\n\n', "Paris", True),
    ('{"answer":"Paris"}', "Paris", True),
    ('```json\n{"answer": "Paris"}\n```', "Paris", True),
    ('```\n{"answer": "Paris"}\n```', "Paris", True),
    ('```JSON {"answer": "Paris"} ```', "Paris", True),
    ('{"answer": "?"}', "?", True),
    ('{"answer": ""}', "", True),
    ('{"answer": "the 1900s", "confidence": "high"}', "the 1900s", True),
    ('{"answer": "a } b { c"}', "a } b { c", True),  # braces inside a string
    ('{"answer": "He said \\"hi\\" {"}', 'He said "hi" {', True),  # escaped quotes
    ('{"answer": "C:\\\\temp"}', "C:\\temp", True),
    ('{"answer": "Z\\u00fcrich"}', "Zürich", True),
    ('{"answer": "first", "answer": "second"}', "second", True),  # duplicate keys: the last wins, as in json.loads
    # lenient: an object is recovered, but the output is not exactly one JSON object
    ('Sure! {"answer": "Paris"}', "Paris", False),
    ('{"answer": "Paris"} I hope this helps.', "Paris", False),
    ('{"answer": "Paris"}}', "Paris", False),
    ('{"answer": "Paris"}\n{"answer": "Lyon"}', "Paris", False),  # the first object wins
    ('Here it is:\n```json\n{"answer": "Paris"}\n```\nAnything else?', "Paris", False),
    ('```json\n{"answer": "Paris"}', "Paris", False),  # unterminated fence
    ('```json\n{"answer": "Paris"}\n```\n```', "Paris", False),
    ("{'answer': 'Paris'}", "Paris", False),  # single quotes
    ("{'answer': 'it\\'s \"x\"'}", 'it\'s "x"', False),
    ('{"answer": "Paris",}', "Paris", False),  # trailing comma
    ('{"answer": "Paris", "sure": True}', "Paris", False),  # Python constant
    ("{'answer': 'Paris', 'sure': None,}", "Paris", False),
    ('{"answer": "two\nlines"}', "two\nlines", False),  # raw newline inside a string is not standard JSON
    ('{"answer": "Paris", "p": NaN}', "Paris", False),  # NaN is not standard JSON
    ('He said "no. {"answer": "Lyon"}', "Lyon", False),  # a stray quote in the prose
    ('Use {curly} braces: {"answer": "Lyon"}', "Lyon", False),
    ('{"reasoning": {"answer": "inner"}} ', "inner", False),  # the object lacks the key: the regex finds one
    # numbers: usable, but not the string the format asks for
    ('{"answer": 1901}', "1901", False),
    ('{"answer": 2.5}', "2.5", False),
    ('{"answer": -3}', "-3", False),
    # values that are no answer
    ('{"answer": null}', None, False),
    ('{"answer": true}', None, False),
    ('{"answer": ["Paris"]}', None, False),
    ('{"answer": {"text": "Paris"}}', None, False),
    ('{"response": "Paris"}', None, False),
    # no object: the last-resort regex
    ('{"answer": "Paris"', "Paris", False),  # truncated before the closing brace
    ('"answer": "He said \\"hi\\""', 'He said "hi"', False),
    ('{"answer": "x\\qy"', "x\\qy", False),  # an escape JSON does not know: kept as written
    ('{"answer": "Par', None, False),  # truncated inside the string
    # nothing at all
    ("", None, False),
    ("   \n ", None, False),
    ("Paris", None, False),
    ("I don't know.", None, False),
    ("{", None, False),
    ("}{", None, False),
    ("```", None, False),
    ("``````", None, False),
    ("[1, 2]", None, False),
    ('"Paris"', None, False),
]


@pytest.mark.parametrize(("raw", "answer", "valid_json"), ANSWER_CASES)
def test_parse_json_answer(raw, answer, valid_json):
    assert parse_json_answer(raw) == ParsedAnswer(answer, valid_json)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"answer": "Paris"}', ParsedOutput({"answer": "Paris"}, True)),
        ('```json\n{"a": [1, {"b": null}]}\n```', ParsedOutput({"a": [1, {"b": None}]}, True)),
        ('{"answer": null}', ParsedOutput({"answer": None}, True)),
        (
            '{"domain": "hotel", "slots": {"area": "north"}} done',
            ParsedOutput({"domain": "hotel", "slots": {"area": "north"}}, False),
        ),
        (
            "{'a': True, 'b': False, 'c': None, 'd': [1, 2,],}",
            ParsedOutput({"a": True, "b": False, "c": None, "d": [1, 2]}, False),
        ),
        ('x {not json} y {"b": 2}', ParsedOutput({"b": 2}, False)),
        ('{"outer": {bad}, "x": 1} {"b": 2}', ParsedOutput({"b": 2}, False)),
        ('{ prose with {"inner": 1} in it }', ParsedOutput({"inner": 1}, False)),
        ('{"a": "}"', ParsedOutput(None, False)),
        ('[{"a": 1}]', ParsedOutput({"a": 1}, False)),  # a list is not an object; its first object is recovered
        ("{}", ParsedOutput({}, True)),
        ("no braces", ParsedOutput(None, False)),
    ],
)
def test_parse_json_output(raw, expected):
    assert parse_json_output(raw) == expected


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("Paris", '{"answer": "Paris"}'),
        (NO_ANSWER, '{"answer": "?"}'),
        ('He said "hi"', '{"answer": "He said \\"hi\\""}'),
        ("back\\slash", '{"answer": "back\\\\slash"}'),
        ("two\nlines", '{"answer": "two\\nlines"}'),
        ("tab\there", '{"answer": "tab\\there"}'),
        ("Zürich café ✓", '{"answer": "Zürich café ✓"}'),
        ("", '{"answer": ""}'),
    ],
)
def test_format_json_answer_round_trips(answer, target):
    assert format_json_answer(answer) == target
    assert parse_json_answer(target) == ParsedAnswer(answer, True)
    assert parse_json_answer(f"Sure, here you go: {target} Anything else?") == ParsedAnswer(answer, False)


def test_custom_key():
    assert format_json_answer("north", key="area") == '{"area": "north"}'
    assert parse_json_answer('{"area": "north"}', key="area") == ParsedAnswer("north", True)
    assert parse_json_answer('{"area": "north"}') == ParsedAnswer(None, False)
    assert parse_json_answer('"area": "north", "answer": "x"', key="area") == ParsedAnswer("north", False)


@pytest.mark.parametrize(
    ("answer", "found", "abstained"),
    [
        ("?", True, True),
        (" ? ", True, True),
        ("?!", True, False),
        ("", True, False),
        ("Paris", True, False),
        (None, False, False),
    ],
)
def test_found_and_abstained(answer, found, abstained):
    parsed = ParsedAnswer(answer, False)
    assert (parsed.found, parsed.abstained) == (found, abstained)


def test_parsed_results_are_frozen():
    with pytest.raises(AttributeError):
        parse_json_answer('{"answer": "x"}').answer = "y"


FUZZ_PIECES = [
    "{",
    "}",
    "{",
    "}",
    '"',
    '"',
    "\\",
    "'",
    ":",
    ",",
    "[",
    "]",
    " ",
    "\n",
    "```",
    "json",
    "answer",
    '"answer"',
    "True",
    "null",
    "NaN",
    "1",
    "-",
    "e",
    "x",
    "é",
    "✓",
    "\x00",
    "\ud800",
    "\t",
    '\\"',
    "{}",
    '": "',
]


def _unfenced(text: str) -> str:
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        return re.sub(r"^[A-Za-z0-9_+.-]*", "", text[3:-3])
    return text


def _fuzz_text(rng: random.Random) -> str:
    if rng.random() < 0.2:  # arbitrary code points, including unpaired surrogates and control characters
        return "".join(chr(rng.randrange(0, 0x110000)) for _ in range(rng.randrange(0, 60)))
    return "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randrange(0, 80)))


def test_fuzz_never_raises_and_keeps_its_promises():
    rng = random.Random(1234)
    for _ in range(3000):
        raw = _fuzz_text(rng)
        output = parse_json_output(raw)
        assert output.value is None or isinstance(output.value, dict), raw
        if output.valid_json:  # strict means the whole output is exactly one JSON object
            assert output.value == json.loads(_unfenced(raw.strip())), raw
        answer = parse_json_answer(raw)
        assert answer.answer is None or isinstance(answer.answer, str), raw
        assert not answer.valid_json or (output.valid_json and isinstance(output.value.get("answer"), str)), raw


def test_fuzz_recovers_an_answer_from_any_brace_free_prose():
    rng = random.Random(99)
    words = ["Sure", "the", "answer", "is", ":", "\n", "!", "Paris", "ok", "```", "#", "'"]
    for _ in range(500):
        answer = "".join(rng.choice(FUZZ_PIECES + words) for _ in range(rng.randrange(0, 10)))
        before = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 8)))
        after = " ".join(rng.choice(words) for _ in range(rng.randrange(0, 8)))
        raw = f"{before} {format_json_answer(answer)} {after}"
        assert parse_json_answer(raw).answer == answer, raw


@pytest.mark.parametrize(
    "garbage",
    [
        "{" * 1_000_000,
        "{" * 500_000 + "}" * 500_000,
        '{"a":' * 200_000,
        '{"a": "' + '\\"' * 500_000,
        "{'x': 1 " * 125_000 + "}" * 125_000,
        '"answer": "\\"' * 80_000,
        "".join(random.Random(7).choices("{}[]\"\\':, aT\n", k=1_000_000)),
    ],
    ids=["open", "nested", "nested-json", "escaped-quotes", "nested-near-json", "answer-keys", "random"],
)
def test_megabyte_of_garbage_parses_without_blowing_up(garbage):
    start = time.perf_counter()
    parsed = parse_json_answer(garbage)
    elapsed = time.perf_counter() - start
    assert parsed.answer is None or isinstance(parsed.answer, str)
    # Not a speed test (benchmarks do that): quadratic work on 1 MB would take minutes, linear takes well under 1 s.
    assert elapsed < 10, f"{elapsed:.1f} s: the parser is not linear"
