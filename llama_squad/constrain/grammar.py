"""The answer object of a spec as a byte automaton, and the tokens each of its states allows."""

import bisect
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from llama_squad.constrain.specs import AnswerSpec
from llama_squad.constrain.tokens import Vocabulary
from llama_squad.constrain.values import QUOTE, Choice, FreeString

MAX_LEADING_WHITESPACE = 2  # spaces or newlines a model may write before the opening brace
WHITESPACE = (ord(" "), ord("\n"))

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
