"""Constrained decoding: answers that are one JSON object of the task's form by construction, and values that can only
be spans of the source text or fixed choices (such as "?").

Modes (``--constrain``):

- ``json``: the output is exactly one JSON object with the asked keys in order (``{"answer": "..."}``, or a MultiWOZ
  domain question's slots), each value any JSON string, then a stop token;
- ``extractive``: each value is also a non-empty span of the source text (the SQuAD context, the MultiWOZ dialogue)
  or one of a few fixed choices (``"?"``, ``"dontcare"``, a categorical slot's values).

How: every token of the vocabulary is read as the bytes it stands for (:class:`Vocabulary`: byte-level BPE or
SentencePiece with byte fallback), and the answer's form as a byte-level automaton (:class:`Grammar`): fixed pieces
(``{"answer": "``) and value fields. A token is allowed when the automaton accepts all its bytes, so spans may start
or end inside a token, and a value never ends inside a JSON escape or a multi-byte UTF-8 character. The allowed tokens
of a state are found either by running all tokens through a compiled transition table at once (``json``: few states,
nearly the whole vocabulary allowed in a string) or by walking the sorted token bytes as a trie, guided by the bytes
the automaton accepts (``extractive``: a suffix automaton of the text's characters allows few). Both are cached per
state, and grammars are shared by questions with the same answer form (the questions of one paragraph or dialogue).

The ``max_new_tokens`` budget is kept: a token is allowed only if the shortest way to close the object from the state
it leads to still fits in the tokens left, so an output cut by the budget is still valid JSON.
"""

import bisect
import functools
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

MAX_LEADING_WHITESPACE = 2  # spaces or newlines a model may write before the opening brace
QUOTE = ord('"')
WHITESPACE = (ord(" "), ord("\n"))


# ---------------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Field:
    """One value of an answer object: its key, and what the value may be."""

    key: str
    free: bool = False  # any JSON string (``json`` mode); else a span of ``source`` or one of ``choices``
    source: str | None = None  # any non-empty span of this text (matched character by character)
    choices: tuple[str, ...] = ()  # or exactly one of these


@dataclass(frozen=True)
class AnswerSpec:
    """The answer object a question expects: its fields, in order."""

    fields: tuple[Field, ...]


def json_spec(keys: tuple[str, ...] | list[str]) -> AnswerSpec:
    """An object of these keys in order, each value any JSON string."""
    return AnswerSpec(tuple(Field(key, free=True) for key in keys))


# ---------------------------------------------------------------------------------------------------- tokens


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character that stands for each byte → the byte. Printable bytes
    stand for themselves; the others for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + k): b for k, b in enumerate(others)}


def _decoder_types(tokenizer) -> list[str]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return []
    state = json.loads(decoder.__getstate__())
    return [d["type"] for d in state.get("decoders", [state])]


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for, or None for tokens that are no answer text (special and added tokens).

    Byte-level BPE (SmolLM2, Llama-3, Qwen2.5) writes each byte as a character of GPT-2's alphabet (``Ġ`` is a
    space); SentencePiece (Llama-2, Mistral, Phi-3) writes a space as ``▁`` and falls back to ``<0xNN>`` byte tokens.
    """
    types = _decoder_types(tokenizer)
    if "ByteLevel" in types:
        kind = "byte_level"
    elif "ByteFallback" in types or "Metaspace" in types:
        kind = "sentencepiece"
    else:
        raise ValueError(
            f"{getattr(tokenizer, 'name_or_path', tokenizer)}: cannot tell which bytes its tokens stand for (decoder "
            f"{types or 'unknown'}); use a byte-level BPE or SentencePiece tokenizer, or --constrain none"
        )
    size = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    excluded = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    decoder = _byte_decoder()
    table: list[bytes | None] = []
    for token_id, piece in enumerate(pieces):
        value = None
        if token_id not in excluded and piece:
            if kind == "byte_level":
                if all(char in decoder for char in piece):
                    value = bytes(decoder[char] for char in piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                value = bytes([int(piece[3:5], 16)])
            else:
                value = piece.replace("\u2581", " ").encode("utf-8")
        table.append(value)
    return table


class Vocabulary:
    """A tokenizer's tokens as bytes (``bytes_of[id]``, None for no text: :func:`token_bytes`), arranged for finding
    the tokens an automaton accepts."""

    def __init__(self, bytes_of: list[bytes | None]):
        self.bytes_of = list(bytes_of)
        self.size = len(self.bytes_of)
        present = [(b, i) for i, b in enumerate(self.bytes_of) if b]
        present.sort()
        self.sorted_bytes = [b for b, _ in present]  # the trie: tokens sharing a prefix are a range of this list
        self.sorted_ids = [i for _, i in present]
        self.known = {b: i for b, i in present}
        self.max_length = max(len(b) for b in self.sorted_bytes)
        # Every token's bytes in a matrix, longest first, so that column j of the first ``count[j]`` rows holds the
        # j-th byte of every token at least j + 1 bytes long.
        by_length = sorted(((len(b), i) for b, i in present), reverse=True)
        self.order = np.array([i for _, i in by_length], dtype=np.int64)
        lengths = np.array([n for n, _ in by_length], dtype=np.int64)
        self.count = [int((lengths > j).sum()) for j in range(self.max_length)]
        matrix = np.zeros((len(by_length), self.max_length), dtype=np.uint8)
        for row, (_, i) in enumerate(by_length):
            b = self.bytes_of[i]
            matrix[row, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        self.columns = [np.ascontiguousarray(matrix[: self.count[j], j]) for j in range(self.max_length)]
        self._min_tokens: dict[bytes, int] = {}

    def min_tokens(self, text: bytes) -> int:
        """The fewest tokens that spell ``text`` (its length when single bytes are tokens; a large number if it
        cannot be spelled)."""
        if text in self._min_tokens:
            return self._min_tokens[text]
        n = len(text)
        best = [0] + [n + 10**6] * n
        for end in range(1, n + 1):
            for start in range(max(0, end - self.max_length), end):
                if best[start] + 1 < best[end] and text[start:end] in self.known:
                    best[end] = best[start] + 1
        if len(self._min_tokens) > 100_000:
            self._min_tokens.clear()
        self._min_tokens[text] = best[n]
        return best[n]


_VOCABULARIES: dict[int, tuple[object, Vocabulary]] = {}


def vocabulary_of(tokenizer) -> Vocabulary:
    """The :class:`Vocabulary` of a tokenizer, built once (a second or two for a 128k vocabulary)."""
    entry = _VOCABULARIES.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = _VOCABULARIES[id(tokenizer)] = (tokenizer, Vocabulary(token_bytes(tokenizer)))
    return entry[1]


# ---------------------------------------------------------------------------------------------------- values


@functools.cache
def escape(char: str) -> bytes:
    """A character as it appears inside a JSON string: UTF-8, with quotes, backslashes and controls escaped."""
    return json.dumps(char, ensure_ascii=False)[1:-1].encode("utf-8")


# Any JSON string content: a byte automaton. N: between characters; ESC: after a backslash; U4..U1: hex digits of
# \uXXXX still to come; C1..C3: UTF-8 continuation bytes to come; E0, ED, F0, F4: lead bytes whose next byte has a
# narrower range (no overlong forms, no surrogates, nothing above U+10FFFF).
N, ESC, U4, U3, U2, U1, C1, C2, C3, E0, ED, F0, F4 = range(13)


@functools.cache
def _free_string_table() -> tuple[tuple[int | None, ...], ...]:
    rows = [[None] * 256 for _ in range(13)]
    for b in range(0x20, 0x80):
        if b not in (QUOTE, ord("\\")):
            rows[N][b] = N
    rows[N][ord("\\")] = ESC
    for b in range(0xC2, 0xE0):
        rows[N][b] = C1
    for b in range(0xE1, 0xF0):
        rows[N][b] = C2
    rows[N][0xE0], rows[N][0xED] = E0, ED
    for b in range(0xF1, 0xF4):
        rows[N][b] = C3
    rows[N][0xF0], rows[N][0xF4] = F0, F4
    for b in b'"\\/bfnrt':
        rows[ESC][b] = N
    rows[ESC][ord("u")] = U4
    for state, after in ((U4, U3), (U3, U2), (U2, U1), (U1, N)):
        for b in b"0123456789abcdefABCDEF":
            rows[state][b] = after
    for state, after, low, high in (
        (C1, N, 0x80, 0xBF), (C2, C1, 0x80, 0xBF), (C3, C2, 0x80, 0xBF),
        (E0, C1, 0xA0, 0xBF), (ED, C1, 0x80, 0x9F), (F0, C2, 0x90, 0xBF), (F4, C2, 0x80, 0x8F),
    ):  # fmt: skip
        for b in range(low, high + 1):
            rows[state][b] = after
    return tuple(tuple(row) for row in rows)


# The canonical way to finish a character from each state (its first byte leads to the state whose completion is the
# rest): what the budget check counts.
_FREE_CLOSE = {
    N: b"", ESC: b"/", U4: b"0020", U3: b"020", U2: b"20", U1: b"0", C1: b"\x80", C2: b"\x80\x80",
    C3: b"\x80\x80\x80", E0: b"\xa0\x80", ED: b"\x80\x80", F0: b"\x90\x80\x80", F4: b"\x80\x80\x80",
}  # fmt: skip


class FreeString:
    """Any JSON string content: escapes, no raw control characters, valid UTF-8."""

    start = N
    max_close = 4
    finite = True

    def __init__(self):
        self.table = _free_string_table()

    def step(self, state, byte: int):
        return self.table[state][byte]

    def can_end(self, state) -> bool:
        return state == N

    def next_bytes(self, state) -> set[int]:
        return {b for b, after in enumerate(self.table[state]) if after is not None}

    def close(self, state) -> bytes:
        return _FREE_CLOSE[state]


class SpanAutomaton:
    """A suffix automaton over the characters of a text, each read as its JSON-escaped UTF-8 bytes: it accepts
    exactly the escaped spans of the text, starting and ending at character boundaries.

    A state is (automaton state, bytes of the character read so far); automaton state 0 is the empty span.
    """

    def __init__(self, text: str):
        nxt: list[dict[bytes, int]] = [{}]
        link, length, last = [-1], [0], 0
        for char in text:
            unit = escape(char)
            cur = len(nxt)
            nxt.append({})
            length.append(length[last] + 1)
            link.append(0)
            p = last
            while p != -1 and unit not in nxt[p]:
                nxt[p][unit] = cur
                p = link[p]
            if p != -1:
                q = nxt[p][unit]
                if length[p] + 1 == length[q]:
                    link[cur] = q
                else:
                    clone = len(nxt)
                    nxt.append(dict(nxt[q]))
                    length.append(length[p] + 1)
                    link.append(link[q])
                    while p != -1 and nxt[p].get(unit) == q:
                        nxt[p][unit] = clone
                        p = link[p]
                    link[q] = link[cur] = clone
            last = cur
        self.next = nxt
        self._continuations: dict[tuple[int, bytes], list[bytes]] = {}

    def continuations(self, q: int, partial: bytes) -> list[bytes]:
        """The characters (escaped) that may follow state ``q`` and start with ``partial``, sorted."""
        key = (q, partial)
        found = self._continuations.get(key)
        if found is None:
            found = sorted(u for u in self.next[q] if len(u) > len(partial) and u.startswith(partial))
            self._continuations[key] = found
        return found

    def step(self, q: int, partial: bytes, byte: int) -> tuple[int, bytes] | None:
        read = partial + bytes((byte,))
        target = self.next[q].get(read)
        if target is not None:
            return target, b""
        if (byte >= 0x80 or byte == ord("\\") or partial) and self.continuations(q, read):
            return q, read
        return None

    def next_bytes(self, q: int, partial: bytes) -> set[int]:
        return {u[len(partial)] for u in self.continuations(q, partial)}

    def close(self, q: int, partial: bytes) -> bytes:
        if q and not partial:
            return b""
        first = self.continuations(q, partial)[0]
        return first[len(partial) :]


class ChoiceTrie:
    """Fixed strings (JSON-escaped) as a byte trie: node 0 is the root."""

    def __init__(self, choices: tuple[str, ...]):
        self.children: list[dict[int, int]] = [{}]
        self.terminal = [False]
        for choice in choices:
            node = 0
            for byte in b"".join(escape(c) for c in choice):
                if byte not in self.children[node]:
                    self.children[node][byte] = len(self.children)
                    self.children.append({})
                    self.terminal.append(False)
                node = self.children[node][byte]
            self.terminal[node] = True
        # the shortest way (then the smallest bytes) from each node to the end of a choice; children come after
        # their parent, so one backward pass sees every child first
        self.closes: list[bytes] = [b""] * len(self.children)
        for node in range(len(self.children) - 1, -1, -1):
            if not self.terminal[node]:
                self.closes[node] = min(
                    (bytes((b,)) + self.closes[child] for b, child in self.children[node].items()),
                    key=lambda c: (len(c), c),
                    default=b"",
                )


@functools.lru_cache(maxsize=64)
def span_automaton(text: str) -> SpanAutomaton:
    """The (cached) span automaton of a text: questions about one paragraph or dialogue share it."""
    return SpanAutomaton(text)


class Choice:
    """A non-empty span of a source text, or one of fixed choices. State: (span state or -1, bytes of the character
    read so far, choice node or -1)."""

    finite = False

    def __init__(self, source: str | None, choices: tuple[str, ...]):
        self.spans = span_automaton(source) if source else None
        self.choices = ChoiceTrie(choices)
        self.start = (0 if self.spans else -1, b"", 0 if choices else -1)
        self.max_close = max(6, max(len(c) for c in self.choices.closes))

    def step(self, state, byte: int):
        q, partial, node = state
        span = self.spans.step(q, partial, byte) if q >= 0 else None
        node = self.choices.children[node].get(byte, -1) if node >= 0 else -1
        if span is None:
            return (-1, b"", node) if node >= 0 else None
        return (span[0], span[1], node)

    def can_end(self, state) -> bool:
        q, partial, node = state
        return (q > 0 and not partial) or (node >= 0 and self.choices.terminal[node])

    def next_bytes(self, state) -> set[int]:
        q, partial, node = state
        found = self.spans.next_bytes(q, partial) if q >= 0 else set()
        return found | set(self.choices.children[node]) if node >= 0 else found

    def close(self, state) -> bytes:
        q, partial, node = state
        if self.can_end(state):
            return b""
        if node >= 0:
            return self.choices.closes[node]
        return self.spans.close(q, partial)


# ---------------------------------------------------------------------------------------------------- grammar

WS, LIT, VAL, END = range(4)
DONE = (-1, 0)  # after the stop token


class Grammar:
    """The answer object of a spec as a byte automaton over states ``(element, state within it)``, and the tokens
    each state allows (``moves``), for one vocabulary.

    Elements: leading whitespace, then literal pieces (``{"answer": "``, ``", "area": "``, ``"}``) around value
    fields, then the end, where only a stop token is allowed. ``prefix``: what the prompt already wrote of the
    answer (``--force_answer``); the automaton starts after it.
    """

    def __init__(self, spec: AnswerSpec, vocabulary: Vocabulary, stop_ids: list[int], prefix: str = ""):
        self.vocabulary = vocabulary
        self.stop_ids = np.array(sorted(set(stop_ids)), dtype=np.int64)
        elements: list[tuple[int, object]] = [(WS, None)]
        for k, f in enumerate(spec.fields):
            key = json.dumps(f.key, ensure_ascii=False).encode("utf-8")
            elements.append((LIT, (b"{" if k == 0 else b'", ') + key + b': "'))
            elements.append((VAL, FreeString() if f.free else Choice(f.source, f.choices)))
        elements.append((LIT, b'"}'))
        elements.append((END, None))
        self.elements = elements
        self.finite = all(x.finite for kind, x in elements if kind == VAL)
        self.rest = [b""] * len(elements)  # the canonical completion from the start of each element
        self.bound = [0] * len(elements)  # the longest canonical completion from any state of an element or later
        for i in range(len(elements) - 2, -1, -1):
            kind, x = elements[i]
            if kind == WS:
                self.rest[i], longest = self.rest[i + 1], len(self.rest[i + 1])
            elif kind == LIT:
                self.rest[i] = x + self.rest[i + 1]
                longest = len(self.rest[i])
            else:
                self.rest[i] = x.close(x.start) + self.rest[i + 1]
                longest = x.max_close + len(self.rest[i + 1])
            self.bound[i] = max(longest, self.bound[i + 1])
        start = (0, 0)
        for byte in prefix.encode("utf-8"):
            start = self.step(start, byte) if start is not None else None
        if start is None:
            raise ValueError(f"the answer prefix {prefix!r} does not open an answer of the form {self.rest[0]!r}")
        self.start = start
        self._moves: OrderedDict = OrderedDict()
        self._table = None

    # -- the automaton

    def _enter(self, i: int, s):
        """State ``s`` of element ``i``, moved on past literals read whole."""
        kind, x = self.elements[i]
        if kind == LIT and s == len(x):
            nxt, y = self.elements[i + 1]
            return self._enter(i + 1, 0 if nxt == LIT else y.start if nxt == VAL else 0)
        return (i, s)

    def step(self, state, byte: int):
        """The state after one more byte, or None if the byte is not allowed there."""
        i, s = state
        kind, x = self.elements[i]
        if kind == WS:
            if byte in WHITESPACE and s < MAX_LEADING_WHITESPACE:
                return (i, s + 1)
            return self.step((i + 1, 0), byte)
        if kind == LIT:
            return self._enter(i, s + 1) if x[s] == byte else None
        if kind == VAL:
            after = x.step(s, byte)
            if after is not None:
                return (i, after)
            if byte == QUOTE and x.can_end(s):
                return self._enter(i + 1, 1)
        return None

    def next_bytes(self, state) -> set[int]:
        i, s = state
        kind, x = self.elements[i]
        if kind == WS:
            return (set(WHITESPACE) if s < MAX_LEADING_WHITESPACE else set()) | self.next_bytes((i + 1, 0))
        if kind == LIT:
            return {x[s]}
        if kind == VAL:
            return x.next_bytes(s) | ({QUOTE} if x.can_end(s) else set())
        return set()

    def close(self, state) -> bytes:
        """The canonical bytes that finish the object from ``state``."""
        i, s = state
        if state == DONE:
            return b""
        kind, x = self.elements[i]
        if kind == LIT:
            return x[s:] + self.rest[i + 1]
        if kind == VAL:
            return x.close(s) + self.rest[i + 1]
        return self.rest[i + 1] if kind == WS else b""

    def need(self, state) -> int:
        """The fewest tokens that finish the object from ``state`` (the end needs none: a stop token is optional)."""
        return self.vocabulary.min_tokens(self.close(state))

    def is_end(self, state) -> bool:
        return state == DONE or self.elements[state[0]][0] == END

    # -- allowed tokens

    def moves(self, state) -> "Moves":
        """The tokens allowed in ``state`` and the state each leads to (cached)."""
        found = self._moves.get(state)
        if found is not None:
            self._moves.move_to_end(state)
            return found
        if self.is_end(state):
            found = Moves(self.stop_ids, np.zeros(len(self.stop_ids), dtype=np.int64), [DONE])
        elif self.finite:
            found = self._table_moves(state)
        else:
            found = self._walk_moves(state)
        self._moves[state] = found
        if len(self._moves) > 20_000:
            self._moves.popitem(last=False)
        return found

    def _walk_moves(self, state) -> "Moves":
        """Walk the sorted token bytes as a trie, following only the bytes the automaton accepts."""
        keys, ids = self.vocabulary.sorted_bytes, self.vocabulary.sorted_ids
        allowed: dict[int, tuple] = {}
        stack = [(0, len(keys), b"", state)]
        while stack:
            lo, hi, prefix, s = stack.pop()
            depth = len(prefix)
            while lo < hi and len(keys[lo]) == depth:  # tokens that are exactly this prefix
                if depth:
                    allowed[ids[lo]] = s
                lo += 1
            if lo == hi:
                continue
            for byte in self.next_bytes(s):
                after = self.step(s, byte)
                if after is None:
                    continue
                branch = prefix + bytes((byte,))
                a = bisect.bisect_left(keys, branch, lo, hi)
                if a == hi or not keys[a].startswith(branch):
                    continue
                b = bisect.bisect_left(keys, prefix + bytes((byte + 1,)), a, hi) if byte < 255 else hi
                stack.append((a, b, branch, after))
        token_ids = sorted(allowed)
        targets = list(dict.fromkeys(allowed.values()))
        code = {t: k for k, t in enumerate(targets)}
        codes = np.array([code[allowed[t]] for t in token_ids], dtype=np.int64)
        return Moves(np.array(token_ids, dtype=np.int64), codes, targets)

    def _compile(self):
        """Every state reachable from the start, numbered, and the byte transition table (-1: rejected)."""
        states, index, rows = [self.start], {self.start: 0}, {}
        todo = [self.start]
        while todo:
            s = todo.pop()
            row = [-1] * 256
            for byte in range(256):
                after = self.step(s, byte)
                if after is None:
                    continue
                if after not in index:
                    index[after] = len(states)
                    states.append(after)
                    todo.append(after)
                row[byte] = index[after]
            rows[index[s]] = row
        table = np.full((len(states) + 1, 256), -1, dtype=np.int32)  # the last row: the rejected state
        for k, row in rows.items():
            table[k] = row
        self._table = (states, index, table)

    def _table_moves(self, state) -> "Moves":
        """Run every token through the transition table at once."""
        if self._table is None:
            self._compile()
        states, index, table = self._table
        if state not in index:  # not reachable from the start
            return self._walk_moves(state)
        v = self.vocabulary
        current = np.full(len(v.order), index[state], dtype=np.int32)
        for j, column in enumerate(v.columns):
            n = v.count[j]
            current[:n] = table[current[:n], column]
        ok = current >= 0
        token_ids, targets = v.order[ok], current[ok]
        sort = np.argsort(token_ids)
        distinct, codes = np.unique(targets[sort], return_inverse=True)
        return Moves(token_ids[sort], codes.astype(np.int64), [states[t] for t in distinct.tolist()])

    def allowed(self, state, tokens_left: int) -> np.ndarray:
        """The token ids allowed in ``state`` when ``tokens_left`` tokens may still be generated (this one included):
        only tokens after which the object can still be closed in time."""
        moves = self.moves(state)
        if state == DONE or tokens_left - 1 >= self.bound[state[0]]:
            return moves.ids
        needs = np.array([self.need(t) for t in moves.targets], dtype=np.int64)
        fits = needs <= tokens_left - 1
        if not fits.any():  # the budget is too small to close at all: take the shortest way anyway
            fits = needs == needs.min()
        return moves.ids[fits[moves.codes]]

    def allowed_row(self, state, tokens_left: int, width: int) -> np.ndarray:
        """:meth:`allowed` as a boolean row of ``width`` logits (cached when the budget does not matter)."""
        if state == DONE or tokens_left - 1 >= self.bound[state[0]]:
            moves = self.moves(state)
            if moves.row is None or len(moves.row) != width:
                moves.row = np.zeros(width, dtype=bool)
                moves.row[moves.ids[moves.ids < width]] = True
            return moves.row
        row = np.zeros(width, dtype=bool)
        ids = self.allowed(state, tokens_left)
        row[ids[ids < width]] = True
        return row

    def advance(self, state, token: int):
        """The state after a generated token; None when the token was not allowed (the row is then left free)."""
        if state is None or state == DONE:
            return state
        return self.moves(state).next_state(token)


@dataclass
class Moves:
    """The tokens allowed in a state (sorted ids) and where each leads (``targets[codes[k]]`` for ``ids[k]``)."""

    ids: np.ndarray
    codes: np.ndarray
    targets: list
    row: np.ndarray | None = None  # the ids as a boolean row of logits, once asked for

    def next_state(self, token: int):
        k = int(np.searchsorted(self.ids, token))
        return self.targets[self.codes[k]] if k < len(self.ids) and self.ids[k] == token else None


# ---------------------------------------------------------------------------------------------------- decoding


class ConstrainedLogitsProcessor(LogitsProcessor):
    """Sets the logits of the tokens a row's grammar does not allow to -inf.

    ``grammars[i]`` constrains the rows of prompt ``i`` (rows ``i * num_beams`` to ``(i + 1) * num_beams - 1``);
    None leaves them free. A row's state is found from the tokens it generated so far (beam search reorders rows,
    so states are keyed by the generated tokens and extended from the previous step's). The prompt width is the
    input width at the first call.
    """

    def __init__(self, grammars: list, num_beams: int, max_new_tokens: int):
        self.grammars = grammars
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.width: int | None = None
        self.states: dict = {}
        self.left_free = 0  # rows that generated a token their grammar did not allow (e.g. a dropped beam)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.width is None:
            self.width = input_ids.shape[1]
        generated = input_ids[:, self.width :].tolist()
        allow = np.zeros(scores.shape, dtype=bool)
        states = {}
        for row, tokens in enumerate(generated):
            example = row // self.num_beams
            grammar = self.grammars[example]
            key = (example, tuple(tokens))
            if grammar is None:
                allow[row] = True
                continue
            if key in states:
                state = states[key]
            elif not tokens:
                state = grammar.start
            else:
                parent = self.states.get((example, key[1][:-1]), grammar.start if len(tokens) == 1 else None)
                state = grammar.advance(parent, tokens[-1])
                if state is None and parent is not None:
                    self.left_free += 1
            states[key] = state
            if state is None:
                allow[row] = True
                continue
            allow[row] = grammar.allowed_row(state, self.max_new_tokens - len(tokens), scores.shape[1])
        self.states = states
        np.logical_not(allow, out=allow)
        return scores.masked_fill_(torch.from_numpy(allow).to(scores.device), float("-inf"))


class Constrainer:
    """Builds the logits processor of a batch: one grammar per prompt, shared by prompts with the same answer form."""

    def __init__(self, tokenizer, stop_ids: list[int], max_grammars: int = 256):
        self.vocabulary = vocabulary_of(tokenizer)
        self.stop_ids = list(stop_ids)
        self.max_grammars = max_grammars
        self._grammars: OrderedDict = OrderedDict()

    def grammar(self, spec: AnswerSpec, prefix: str = "") -> Grammar:
        key = (spec, prefix)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = Grammar(spec, self.vocabulary, self.stop_ids, prefix)
            except ValueError:  # the prompt forced another opening (--force_answer on a multi-key answer)
                logger.warning("answer prefix %r does not open this answer's form: constraining a JSON answer", prefix)
                grammar = Grammar(json_spec(["answer"]), self.vocabulary, self.stop_ids, prefix)
            self._grammars[key] = grammar
            if len(self._grammars) > self.max_grammars:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(key)
        return grammar

    def processor(self, specs: list, prefixes: list[str], num_beams: int, max_new_tokens: int):
        """The logits processor of a batch of prompts (``specs[i]`` None: prompt ``i`` is free)."""
        grammars = [
            None if spec is None else self.grammar(spec, prefix) for spec, prefix in zip(specs, prefixes, strict=True)
        ]
        return ConstrainedLogitsProcessor(grammars, num_beams, max_new_tokens)
