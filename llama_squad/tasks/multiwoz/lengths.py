"""Token lengths of MultiWOZ examples: a tokenizer's counts, and where to cut a history to fit ``--max_length``."""

import bisect
from pathlib import Path

from llama_squad.files import InputError
from llama_squad.tasks.multiwoz.prompts import TRUNCATION_MARKER, Question, TurnHistory, build_messages

# Examples whose estimated length is this close to --max_length are counted exactly (rendered with the chat template).
EXACT_CHECK_MARGIN = 16


class TokenCounter:
    """Counts tokens with a Hugging Face tokenizer: plain texts (batched), and whole chats via the chat template."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                f"--tokenizer_name_or_path {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template: "
                "pass the tokenizer of the chat model you will train, or --max_length 0"
            )
        self.tokenizer = tokenizer

    def texts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def chat(self, messages: list[dict]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return len(ids)


def load_token_counter(name_or_path: str) -> TokenCounter:
    """The counter of ``--tokenizer_name_or_path`` ("embedded" is the SmolLM2 tokenizer)."""
    from llama_squad.models import load_tokenizer, resolve_model_path

    local = Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if local and not Path(name_or_path).expanduser().is_dir():
        raise InputError(
            f"--tokenizer_name_or_path {name_or_path}: no such folder; pass a tokenizer folder, a cached Hub id or "
            "'embedded', or --max_length 0 for no length limit"
        )
    try:
        tokenizer = load_tokenizer(resolve_model_path(name_or_path))
    except InputError:
        raise
    except (OSError, ValueError) as e:  # no such folder or Hub id, offline and not cached, no tokenizer files
        raise InputError(
            f"--tokenizer_name_or_path {name_or_path!r}: cannot load a tokenizer ({' '.join(str(e).split())}); "
            "pass a tokenizer folder, a cached Hub id or 'embedded', or --max_length 0 for no length limit"
        ) from None
    return TokenCounter(tokenizer)


class HistoryBudget:
    """Where a turn's history must start for each example to fit ``max_length`` tokens, cut from the left.

    Each utterance is measured once per dialogue (:meth:`prefix_sums`), the fixed part of each question (its messages
    around an empty dialogue and an empty answer) once, and each distinct answer once, so a question costs a
    prefix-sum lookup, not a tokenization; only examples within ``EXACT_CHECK_MARGIN`` tokens of the budget are
    rendered with the chat template and counted exactly.
    """

    def __init__(self, counter: TokenCounter, questions: list[Question], system_prompt: str, max_length: int):
        self.counter, self.system_prompt, self.limit = counter, system_prompt, max_length
        self.fixed = {}  # tokens of each question's messages around an empty dialogue and an empty answer
        for q in questions:
            prompt, completion = build_messages("", q, "", system_prompt)
            self.fixed[q.name] = counter.chat(prompt + completion)
        self.marker_tokens = counter.texts([TRUNCATION_MARKER])[0]
        self.answer_tokens: dict[str, int] = {}

    def prefix_sums(self, lines: list[str]) -> list[int]:
        """``[0, tokens of lines[0], tokens of lines[:2], ...]``: the tokens of a run of utterances by subtraction."""
        prefix = [0]
        for n in self.counter.texts(lines):
            prefix.append(prefix[-1] + n)
        return prefix

    def start(
        self, question: Question, target: str, prefix: list[int], position: int, history_from: TurnHistory
    ) -> tuple[int, bool]:
        """(the first utterance to keep of the user turn at ``position``, whether the example is still over the budget
        with only that turn left); the oldest utterances go first, the current user turn never."""
        if target not in self.answer_tokens:
            self.answer_tokens[target] = self.counter.texts([target])[0]
        budget = self.limit - self.fixed[question.name] - self.answer_tokens[target]
        end = position + 1
        start = 0
        if prefix[end] > budget:  # drop the oldest utterances, keep the current user turn
            needed = prefix[end] + self.marker_tokens - budget
            start = min(bisect.bisect_left(prefix, needed, 1, end), position)
        if prefix[end] - prefix[start] + (self.marker_tokens if start else 0) > budget - EXACT_CHECK_MARGIN:
            # near the budget the sum of per-utterance counts may be off by a token or two: count exactly
            return self._exact_start(question, target, start, position, history_from)
        return start, False

    def _exact_start(
        self, question: Question, target: str, start: int, position: int, history_from: TurnHistory
    ) -> tuple[int, bool]:
        """:meth:`start` counted on the rendered chat: drop one more utterance until the example fits."""
        while True:
            prompt, completion = build_messages(history_from(start), question, target, self.system_prompt)
            over = self.counter.chat(prompt + completion) > self.limit
            if not over or start == position:
                return start, over
            start += 1
