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

Modules, in the order the pieces build on each other:

- :mod:`~llama_squad.constrain.specs`: the answer forms a task asks for (:class:`AnswerSpec` of :class:`Field`);
- :mod:`~llama_squad.constrain.tokens`: the bytes of a tokenizer's tokens (:func:`token_bytes`, :class:`Vocabulary`);
- :mod:`~llama_squad.constrain.values`: value fields as byte automata (:class:`FreeString`, :class:`SpanAutomaton`,
  :class:`ChoiceTrie`, :class:`Choice`);
- :mod:`~llama_squad.constrain.grammar`: the whole answer object and the tokens each state allows (:class:`Grammar`,
  :class:`Moves`);
- :mod:`~llama_squad.constrain.decoding`: the logits processor of a batch (:class:`ConstrainedLogitsProcessor`,
  :class:`Constrainer`).
"""

from llama_squad.constrain.decoding import ConstrainedLogitsProcessor, Constrainer
from llama_squad.constrain.grammar import DONE, Grammar, Moves
from llama_squad.constrain.specs import AnswerSpec, Field, json_spec
from llama_squad.constrain.tokens import Vocabulary, token_bytes, vocabulary_of
from llama_squad.constrain.values import Choice, ChoiceTrie, FreeString, SpanAutomaton, escape, span_automaton

__all__ = [
    "DONE",
    "AnswerSpec",
    "Choice",
    "ChoiceTrie",
    "ConstrainedLogitsProcessor",
    "Constrainer",
    "Field",
    "FreeString",
    "Grammar",
    "Moves",
    "SpanAutomaton",
    "Vocabulary",
    "escape",
    "json_spec",
    "span_automaton",
    "token_bytes",
    "vocabulary_of",
]
