"""Constrained decoding in ``generate``: a logits processor that masks what each row's grammar does not allow."""

import logging
from collections import OrderedDict

import numpy as np
import torch
from transformers import LogitsProcessor

from llama_squad.constrain.grammar import Grammar
from llama_squad.constrain.specs import AnswerSpec, json_spec
from llama_squad.constrain.tokens import vocabulary_of

logger = logging.getLogger(__name__)


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
