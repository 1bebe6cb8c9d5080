"""Building the MultiWOZ DatasetDict: every question at every user turn of every dialogue, gathered as Arrow rows."""

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets

from llama_squad.tasks.multiwoz.lengths import HistoryBudget, TokenCounter, load_token_counter
from llama_squad.tasks.multiwoz.options import NAME, Arguments, check_arguments
from llama_squad.tasks.multiwoz.prompts import (
    Question,
    TurnHistory,
    build_messages,
    history_lines,
    make_questions,
    target_of,
)
from llama_squad.tasks.multiwoz.readers import Dialogue
from llama_squad.tasks.multiwoz.schema import default_slots, load_schema
from llama_squad.tasks.multiwoz.splits import load_splits

logger = logging.getLogger(__name__)

# Rows gathered as Python objects before they are converted to Arrow: bounds the memory of a 221k-row split.
CHUNK_ROWS = 20_000


def dataset_features(domain_mode: bool) -> Features:
    """The columns of a split: the common ones, then the slot (or, per domain, the slots and their gold values)."""
    messages = [{"role": Value("string"), "content": Value("string")}]
    common = {
        "id": Value("string"), "task": Value("string"), "prompt": messages, "completion": messages,
        "question": Value("string"), "answers": [Value("string")], "dialogue_id": Value("string"),
        "turn": Value("int64"), "domain": Value("string"), "goal_domains": Value("string"),
    }  # fmt: skip
    if domain_mode:
        return Features({**common, "slots": [Value("string")], "slot_answers": [[Value("string")]]})
    return Features({**common, "slot": Value("string")})


def _to_arrow(columns: dict[str, list], features: Features) -> Dataset:
    """The rows gathered in ``columns`` as a Dataset; empties ``columns`` (their Python objects are freed)."""
    columns["task"] = [NAME] * len(columns["id"])
    schema = features.arrow_schema  # Arrow arrays made here skip datasets' per-value Python encoding
    dataset = Dataset.from_dict({k: pa.array(v, type=schema.field(k).type) for k, v in columns.items()}, features)
    for values in columns.values():
        values.clear()
    return dataset


@dataclass
class SplitStats:
    """What :func:`build_split` made, for the log."""

    dialogues: int = 0
    turns: int = 0
    examples: int = 0
    empty_targets: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    too_long: int = 0


class _Turn(NamedTuple):
    """One user turn of a dialogue, as its questions need it."""

    dialogue_id: str
    goal_domains: str  # the domains of the dialogue's goal, space-separated
    turn: int  # the user-turn index, from 0
    position: int  # its index in the dialogue's utterances
    state: dict[str, tuple[str, ...]]  # the gold state after it
    prefix: list[int] | None  # token prefix sums of the dialogue's utterances (with a budget)
    history: TurnHistory


class _SplitRows:
    """The rows of one split, added question by question, turned into Arrow ``CHUNK_ROWS`` at a time."""

    def __init__(
        self,
        questions: list[Question],
        system_prompt: str,
        budget: HistoryBudget | None,
        keep_empty: Callable[[], bool] | None,
    ):
        self.questions, self.system_prompt, self.budget, self.keep_empty = questions, system_prompt, budget, keep_empty
        self.single = {q.name: len(q.slots) == 1 and q.name == q.slots[0].name for q in questions}
        self.features = dataset_features(domain_mode=not all(self.single.values()))
        self.columns: dict[str, list] = {name: [] for name in self.features}
        self.chunks: list[Dataset] = []  # rows already converted to Arrow
        self.targets: dict[tuple, str] = {}  # (question, first gold values) → JSON target: one json.dumps per answer
        self.stats = SplitStats()

    def add_dialogue(self, dialogue: Dialogue) -> None:
        """Every question at every user turn of ``dialogue``."""
        self.stats.dialogues += 1
        if len(self.columns["id"]) >= CHUNK_ROWS:
            self.chunks.append(_to_arrow(self.columns, self.features))
        lines = history_lines(dialogue)
        prefix = self.budget.prefix_sums(lines) if self.budget is not None else None
        goals = " ".join(dialogue.goal_domains)
        for turn, (position, state) in enumerate(zip(dialogue.user_positions, dialogue.states, strict=True)):
            self.stats.turns += 1
            history = TurnHistory(lines, position + 1)
            at = _Turn(dialogue.dialogue_id, goals, turn, position, state, prefix, history)
            for q in self.questions:
                self.add_question(q, at)

    def add_question(self, q: Question, turn: _Turn) -> None:
        """The example of ``q`` at ``turn``, unless it is an empty one that ``keep_empty()`` drops."""
        firsts = tuple(turn.state[s.name][0] if s.name in turn.state else None for s in q.slots)
        empty = firsts.count(None) == len(firsts)
        if empty and self.keep_empty is not None and not self.keep_empty():
            self.stats.dropped_empty += 1
            return
        target = self.targets.get((q.name, firsts))
        if target is None:
            target = self.targets[q.name, firsts] = target_of(q, turn.state)
        start = 0
        if self.budget is not None:
            start, too_long = self.budget.start(q, target, turn.prefix, turn.position, turn.history)
            self.stats.too_long += too_long
            self.stats.truncated += start > 0
        prompt, completion = build_messages(turn.history(start), q, target, self.system_prompt)
        self.add_row(q, turn, prompt, completion, target)
        self.stats.examples += 1
        self.stats.empty_targets += empty

    def add_row(self, q: Question, turn: _Turn, prompt: list[dict], completion: list[dict], target: str) -> None:
        """One row: the common columns, then the slot's (or the domain's slots and their gold values)."""
        columns = self.columns
        columns["id"].append(f"{turn.dialogue_id}/{turn.turn}/{q.name}")
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["question"].append(q.text)
        columns["dialogue_id"].append(turn.dialogue_id)
        columns["turn"].append(turn.turn)
        columns["domain"].append(q.domain)
        columns["goal_domains"].append(turn.goal_domains)
        if self.single[q.name]:
            columns["answers"].append(list(turn.state.get(q.name, ())))
            columns["slot"].append(q.name)
        else:
            columns["answers"].append([target])
            columns["slots"].append([s.name for s in q.slots])
            columns["slot_answers"].append([list(turn.state.get(s.name, ())) for s in q.slots])

    def dataset(self) -> Dataset:
        """The rows added, as one Dataset."""
        self.chunks.append(_to_arrow(self.columns, self.features))
        return self.chunks[0] if len(self.chunks) == 1 else concatenate_datasets(self.chunks)


def build_split(
    dialogues: list[Dialogue],
    questions: list[Question],
    *,
    system_prompt: str = "",
    max_length: int = 0,
    counter: TokenCounter | None = None,
    keep_empty: Callable[[], bool] | None = None,
    progress: str | None = None,
) -> tuple[Dataset, SplitStats]:
    """The chat examples of ``dialogues``: every question at every user turn.

    With ``max_length`` (and a ``counter``) the history is cut from the left to fit (:class:`HistoryBudget`).
    ``keep_empty()`` decides whether to keep an example whose answer is all "?".
    """
    from tqdm.auto import tqdm

    budget = (
        HistoryBudget(counter, questions, system_prompt, max_length) if max_length and counter is not None else None
    )
    rows = _SplitRows(questions, system_prompt, budget, keep_empty)
    for dialogue in tqdm(dialogues, desc=progress, unit="dialogue", disable=progress is None, dynamic_ncols=True):
        rows.add_dialogue(dialogue)
    return rows.dataset(), rows.stats


def build_dataset(args: Arguments) -> DatasetDict:
    """Check the options, read the dialogues, split them by dialogue and ask every question at every user turn
    (not saved)."""
    check_arguments(args)
    slots = load_schema(args.schema_file) if args.schema_file else default_slots()
    questions = make_questions(slots, args.granularity, args.list_categorical_values)
    splits = load_splits(args)
    counter = load_token_counter(args.tokenizer_name_or_path) if args.max_length else None
    rng = random.Random(args.seed)

    def keep_empty() -> bool:
        return rng.random() < args.keep_empty_fraction

    datasets = {}
    for name, dialogues in splits.items():
        datasets[name], stats = build_split(
            dialogues,
            questions,
            system_prompt=args.system_prompt,
            max_length=args.max_length,
            counter=counter,
            keep_empty=keep_empty if name == "train" and args.keep_empty_fraction < 1 else None,
            progress=name,
        )
        _log_stats(name, stats, args.max_length)
    return DatasetDict(datasets)


def _log_stats(name: str, stats: SplitStats, max_length: int) -> None:
    logger.info(
        '%-10s %5d dialogues, %6d user turns, %7d questions (%4.1f%% answered "?"%s), %d histories cut%s',
        name,
        stats.dialogues,
        stats.turns,
        stats.examples,
        100 * stats.empty_targets / max(1, stats.examples),
        f", {stats.dropped_empty} dropped" if stats.dropped_empty else "",
        stats.truncated,
        f", {stats.too_long} over --max_length {max_length} even so" if stats.too_long else "",
    )
