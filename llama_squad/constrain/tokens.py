"""The bytes each token of a tokenizer stands for, arranged for finding the tokens an automaton accepts."""

import functools
import json

import numpy as np


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
