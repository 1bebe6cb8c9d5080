"""Answer values as byte automata: any JSON string, or a span of a source text or one of fixed choices."""

import functools
import json

QUOTE = ord('"')


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
