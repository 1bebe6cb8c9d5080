"""MultiWOZ dialogue state tracking as slot questions: read 2.1/2.4/2.2 dialogues, build chat prompts, score states.

Every user turn of a dialogue asks, for each of the 30 tracked slots (``--granularity slot``) or for each of the 5
domains at once (``--granularity domain``), what value the user wants given the dialogue so far. The target is JSON:
``{"answer": "cheap"}``, ``{"answer": "dontcare"}``, or ``{"answer": "?"}`` when the slot is not set; a domain
question answers ``{"area": "centre", "name": "?", ...}``.

One module per step: :mod:`.schema` (the slots), :mod:`.readers` (the dialogues of each layout), :mod:`.splits`,
:mod:`.options` (``create_dataset.py --task multiwoz``), :mod:`.prompts` (questions and messages), :mod:`.lengths`
(fitting ``--max_length``), :mod:`.dataset` (the rows), :mod:`.trade_labels` (TRADE's label normalization) and
:mod:`.scoring` (strict, fuzzy and TRADE matching, joint goal accuracy); :mod:`.task` is the
:class:`~llama_squad.tasks.base.Task` (``TASK``). This package holds the names callers use.

Columns of a row: ``id`` (``dialogue/turn/slot``, or ``dialogue/turn/domain``), ``task``, ``prompt``,
``completion``, ``question``, ``answers`` (the slot's gold alternatives, [] when not set; for a domain question, its
JSON target), ``dialogue_id``, ``turn`` (user-turn index, from 0), ``domain``, ``goal_domains`` (the domains of the
dialogue's goal, space-separated), and ``slot`` (slot granularity) or ``slots`` + ``slot_answers`` (domain
granularity: the slots asked and the gold alternatives of each).
"""

from llama_squad.tasks.multiwoz.dataset import SplitStats, build_dataset, build_split, dataset_features
from llama_squad.tasks.multiwoz.lengths import HistoryBudget, TokenCounter, load_token_counter
from llama_squad.tasks.multiwoz.options import NAME, Arguments, check_arguments, check_sources
from llama_squad.tasks.multiwoz.prompts import (
    ANSWER_INSTRUCTION,
    DOMAIN_INSTRUCTION,
    GRANULARITIES,
    TRUNCATION_MARKER,
    Question,
    TurnHistory,
    build_messages,
    constraint_of,
    dialogue_of,
    domain_question,
    history_lines,
    instruction,
    make_questions,
    slot_question,
    target_of,
)
from llama_squad.tasks.multiwoz.readers import SPEAKERS, Dialogue, clean_id, gold_values, read_dialogues, read_id_list
from llama_squad.tasks.multiwoz.schema import (
    DOMAINS,
    DONTCARE,
    DONTCARE_GOLD_VALUES,
    EMPTY_GOLD_VALUES,
    SCHEMA_SLOTS,
    SLOT_NAMES,
    Slot,
    default_slots,
    load_schema,
)
from llama_squad.tasks.multiwoz.scoring import (
    EXTRA_RESULT_COLUMNS,
    NO_VALUE,
    fuzzy_value,
    normalize_value,
    numeric_as_gold,
    score_output,
    score_value,
    summarize,
    token_f1,
    trade_match,
)
from llama_squad.tasks.multiwoz.splits import load_splits, split_by_dialogue
from llama_squad.tasks.multiwoz.task import MultiWOZ, dialogue_history
from llama_squad.tasks.multiwoz.trade_labels import normalize_label_trade

TASK = MultiWOZ()

__all__ = [
    # the task (llama_squad.tasks)
    "TASK", "MultiWOZ", "dialogue_history",
    "NAME", "Arguments", "build_dataset", "EXTRA_RESULT_COLUMNS", "score_output", "summarize", "constraint_of",
    # schema and dialogues
    "DOMAINS", "SLOT_NAMES", "SCHEMA_SLOTS", "DONTCARE", "EMPTY_GOLD_VALUES", "DONTCARE_GOLD_VALUES", "Slot",
    "default_slots", "load_schema", "SPEAKERS", "Dialogue", "clean_id", "gold_values", "read_dialogues",
    "read_id_list", "split_by_dialogue", "load_splits", "check_sources", "check_arguments",
    # questions, prompts, lengths and rows
    "GRANULARITIES", "TRUNCATION_MARKER", "ANSWER_INSTRUCTION", "DOMAIN_INSTRUCTION", "Question", "slot_question",
    "domain_question", "make_questions", "instruction", "history_lines", "build_messages", "TurnHistory",
    "target_of", "dialogue_of", "TokenCounter", "load_token_counter", "HistoryBudget", "dataset_features",
    "SplitStats", "build_split",
    # scoring
    "NO_VALUE", "normalize_value", "fuzzy_value", "normalize_label_trade", "trade_match", "numeric_as_gold",
    "token_f1", "score_value",
]  # fmt: skip
