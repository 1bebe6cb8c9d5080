"""JSON answers: format them for training targets, parse them out of raw model output."""

import heapq
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

NO_ANSWER = "?"

# How many balanced ``{...}`` spans each pass of lenient recovery tries (earliest first) before it gives up; with a
# budget of about the text's length read, it bounds the work on adversarial input (deeply nested braces).
MAX_CANDIDATES = 32

# Optional markdown fence info string, e.g. the ``json`` of ```json.
_FENCE_TAG = re.compile(r"[A-Za-z0-9_+.-]*")
# What the brace scanner sees inside an object: braces (group 1 or 2), and double-quoted strings, which may hold
# braces (group 3 is the closing quote; None when the string is unterminated). Unrolled loop: linear, no backtracking.
_OPEN, _CLOSE = 1, 2
_SCAN_TOKENS = re.compile(r'(\{)|(\})|"[^"\\]*(?:\\.[^"\\]*)*(")?', re.DOTALL)
_SCAN_BRACES = re.compile(r"(\{)|(\})")
# Near-JSON tokens: strings (double or single quoted, possibly unterminated), trailing commas, Python constants.
_NEAR_JSON = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"?'
    r"|'(?P<single>[^'\\]*(?:\\.[^'\\]*)*)(?P<closed>')?"
    r"|,(?=\s*[}\]])"
    r"|\b(?:True|False|None)\b",
    re.DOTALL,
)
_NEEDS_REPAIR = re.compile(r"'|,\s*[}\]]|\b(?:True|False|None)\b")
_PYTHON_CONSTANTS = {"True": "true", "False": "false", "None": "null"}
_SINGLE_QUOTED_ESCAPES = re.compile(r"\\.|\"", re.DOTALL)

_LENIENT_DECODER = json.JSONDecoder(strict=False)  # allows raw newlines and tabs inside strings


def format_json_answer(answer: str, key: str = "answer") -> str:
    """The training target of ``answer``: one line of JSON, ``{"answer": "..."}``, non-ASCII kept as is.

    Quotes, backslashes and control characters (newlines, tabs) are escaped, so the target always parses back.
    """
    return json.dumps({key: answer}, ensure_ascii=False)


@dataclass(frozen=True)
class ParsedOutput:
    """The JSON object found in a model output.

    ``value`` is the object (None when none could be recovered); ``valid_json`` is True only when the whole output
    (stripped, optionally inside one markdown fence) is exactly one standard JSON object.
    """

    value: dict | None
    valid_json: bool


@dataclass(frozen=True)
class ParsedAnswer:
    """The answer found in a model output, as written (scoring normalizes it).

    ``answer`` is None when no answer could be recovered; ``valid_json`` is True only when the output is exactly one
    JSON object whose answer key holds a string.
    """

    answer: str | None
    valid_json: bool

    @property
    def found(self) -> bool:
        """Whether an answer could be recovered at all (leniently)."""
        return self.answer is not None

    @property
    def abstained(self) -> bool:
        """Whether the model said the context holds no answer (``"?"``)."""
        return self.answer is not None and self.answer.strip() == NO_ANSWER


def _reject_constant(name: str):
    """``parse_constant`` hook of the strict parse: NaN and Infinity are not standard JSON."""
    raise ValueError(f"{name} is not standard JSON")


def _strip_fence(text: str) -> str:
    """``text`` without one markdown fence around all of it (```json ... ``` or ``` ... ```), else unchanged."""
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        inner = text[3:-3]
        return inner[_FENCE_TAG.match(inner).end() :]
    return text


def _strict_object(text: str) -> dict | None:
    """The object that ``text`` is, exactly (standard JSON, surrounding whitespace allowed), or None."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _object_spans(text: str, skip_strings: bool) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the balanced ``{...}`` spans of ``text``: object by top-level object, outer before inner.

    With ``skip_strings``, double-quoted strings inside a span are skipped (so braces in them do not count); quotes
    outside any span are prose and ignored. Stray closing braces are ignored; spans inside an opening brace that
    never closes come last. One pass over the braces and strings: linear in ``len(text)``, and lazy, so the first
    object of a long output is tried before the rest is scanned. At most :data:`MAX_CANDIDATES` spans per top-level
    object.
    """
    tokens = _SCAN_TOKENS if skip_strings else _SCAN_BRACES
    stack: list[int] = []
    closed: list[tuple[int, int]] = []  # spans closed since the last top-level object ended
    pos = text.find("{")
    while pos >= 0:  # outside objects everything but an opening brace is prose
        stack.append(pos)
        end = None
        for match in tokens.finditer(text, pos + 1):
            kind = match.lastindex
            if kind == _OPEN:
                stack.append(match.start())
            elif kind == _CLOSE:
                start = stack.pop()
                if len(stack) < MAX_CANDIDATES:  # a deeper span has that many ancestors that start before it
                    closed.append((start, match.end()))
                if not stack:
                    end = match.end()
                    break
            elif kind is None:
                break  # an unterminated string: nothing after it can close an object
        if end is None:
            break  # the text ended inside an object
        yield from heapq.nsmallest(MAX_CANDIDATES, closed)
        closed = []
        pos = text.find("{", end)
    yield from heapq.nsmallest(MAX_CANDIDATES, closed)


def _single_quoted_to_json(body: str) -> str:
    """The body of a Python single-quoted string (``it\\'s "x"``) as a JSON string (``"it's \\"x\\""``)."""

    def convert(match: re.Match) -> str:
        escape = match.group()
        if escape == '"':
            return '\\"'
        return "'" if escape == "\\'" else escape

    return '"' + _SINGLE_QUOTED_ESCAPES.sub(convert, body) + '"'


def _repair_near_json(text: str) -> str:
    """Common near-JSON made standard: single-quoted strings, trailing commas, Python True/False/None."""

    def repair(match: re.Match) -> str:
        token = match.group()
        if token[0] == '"':
            return token
        if token[0] == "'":
            return _single_quoted_to_json(match.group("single")) if match.group("closed") else token
        if token[0] == ",":
            return ""
        return _PYTHON_CONSTANTS[token]

    return _NEAR_JSON.sub(repair, text)


def _lenient_object(text: str) -> dict | None:
    """The object ``text`` holds, read leniently (raw control characters in strings, then near-JSON), or None."""
    attempts = (text, _repair_near_json(text)) if _NEEDS_REPAIR.search(text) else (text,)
    for attempt in attempts:
        try:
            value = _LENIENT_DECODER.decode(attempt)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _recover_object(text: str) -> dict | None:
    """The first balanced ``{...}`` of ``text`` (earliest start, outer before inner) that reads as an object.

    Strings are honoured first (a brace inside a string does not count); if that finds nothing, for example
    because a stray quote in the prose threw the scan off, braces are matched ignoring quotes. Each pass tries at
    most :data:`MAX_CANDIDATES` spans, and both together read about the length of the text, so adversarial input
    (deeply nested braces) costs a few linear passes.
    """
    if "{" not in text:
        return None
    tried: set[tuple[int, int]] = set()
    budget = len(text) + 65536  # characters to read; the first span is always tried whole
    for skip_strings in (True, False):
        if not skip_strings and '"' not in text:
            break  # the same spans again
        attempts = 0
        for start, end in _object_spans(text, skip_strings):
            if (start, end) in tried:
                continue
            tried.add((start, end))
            value = _lenient_object(text[start:end])
            if value is not None:
                return value
            attempts, budget = attempts + 1, budget - (end - start)
            if budget < 0:
                return None
            if attempts >= MAX_CANDIDATES:
                break
    return None


def parse_json_output(raw: str) -> ParsedOutput:
    """The JSON object in a model's raw output; never raises.

    Strict: the output, stripped of whitespace and of one markdown fence around all of it, is exactly one standard
    JSON object → ``valid_json=True``. Otherwise lenient recovery (``valid_json=False``): the first balanced
    ``{...}`` anywhere (prose before or after it, trailing text, a fenced block inside prose, an unterminated fence)
    that reads as JSON, allowing raw newlines in strings, single quotes, trailing commas and Python
    True/False/None. Nothing recoverable → ``value=None``.
    """
    text = raw.strip()
    value = _strict_object(_strip_fence(text))
    if value is not None:
        return ParsedOutput(value, True)
    return ParsedOutput(_recover_object(text), False)


def _key_pattern(key: str) -> re.Pattern:
    """``"key": "..."`` with escaped quotes inside the value (the last-resort regex)."""
    return re.compile('"' + re.escape(key) + r'"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)


_ANSWER_PATTERN = _key_pattern("answer")


def _regex_answer(raw: str, key: str) -> str | None:
    """The value of the first ``"key": "..."`` in ``raw``, unescaped as JSON where it can be, or None."""
    pattern = _ANSWER_PATTERN if key == "answer" else _key_pattern(key)
    match = pattern.search(raw)
    if match is None:
        return None
    try:
        return _LENIENT_DECODER.decode('"' + match.group(1) + '"')
    except ValueError:  # an escape JSON does not know, such as \x41: keep the text as written
        return match.group(1)


def parse_json_answer(raw: str, key: str = "answer") -> ParsedAnswer:
    """The answer in a model's raw output, as written; never raises.

    - ``{"answer": "..."}`` as the whole output (optionally fenced) → that string, ``valid_json=True``.
    - Recovered leniently (see :func:`parse_json_output`) → that string, ``valid_json=False``.
    - A number (``{"answer": 1901}``) → its JSON text (``"1901"``), ``valid_json=False``: the format asks for a
      string, but the answer is usable.
    - null, true/false, a list or an object → ``answer=None``, ``valid_json=False``.
    - No object, or an object without ``key`` → the first ``"answer": "..."`` anywhere (escaped quotes allowed),
      ``valid_json=False``; none → ``answer=None``.
    """
    parsed = parse_json_output(raw)
    if parsed.value is not None and key in parsed.value:
        value = parsed.value[key]
        if isinstance(value, str):
            return ParsedAnswer(value, parsed.valid_json)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return ParsedAnswer(json.dumps(value), False)
        return ParsedAnswer(None, False)
    return ParsedAnswer(_regex_answer(raw, key), False)
