"""SQuAD v2: extractive QA with abstention. Read the official JSON, a Hub dataset or JSON Lines; build chat prompts
whose answer is ``{"answer": "..."}`` (``"?"`` when the context holds no answer); score answers as the official
script does.

One module per step: :mod:`.options` (``create_dataset.py --task squad_v2``), :mod:`.readers` (records, checked),
:mod:`.prompts` (messages, and what ``--constrain`` allows), :mod:`.dataset` (splits by article, rows),
:mod:`.scoring` (a row's scores and a run's metrics), :mod:`.official` (the official ``evaluate-v2.0.py``,
``python -m llama_squad.squad_eval``), :mod:`.metric` (the scorer as an ``evaluate`` metric) and :mod:`.task` (the
:class:`~llama_squad.tasks.base.Task`).
"""

from llama_squad.tasks.squad_v2.dataset import build_dataset, split_by_article, to_dataset
from llama_squad.tasks.squad_v2.options import NAME, PROMPT_STYLES, Arguments, check_arguments, parse_slice
from llama_squad.tasks.squad_v2.prompts import (
    ANSWER_FORMAT,
    MULTI_TURN_INSTRUCTIONS,
    SINGLE_TURN_INSTRUCTION,
    build_messages,
    constraint_of,
)
from llama_squad.tasks.squad_v2.readers import Record, read_hub_split, read_squad
from llama_squad.tasks.squad_v2.scoring import EXTRA_RESULT_COLUMNS, has_answer, score_output, summarize
from llama_squad.tasks.squad_v2.task import SquadV2

TASK = SquadV2()

__all__ = [
    "TASK", "NAME", "PROMPT_STYLES", "Arguments", "check_arguments", "parse_slice", "Record", "read_squad",
    "read_hub_split", "ANSWER_FORMAT", "SINGLE_TURN_INSTRUCTION", "MULTI_TURN_INSTRUCTIONS", "build_messages",
    "constraint_of", "split_by_article", "to_dataset", "build_dataset", "EXTRA_RESULT_COLUMNS", "has_answer",
    "score_output", "summarize",
]  # fmt: skip
