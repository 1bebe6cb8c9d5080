"""The tasks: each module owns its data loading, prompt formatting and scoring.

A task module exposes:

- ``NAME``: the value of ``--task``;
- ``Arguments``: a dataclass (subclass of :class:`llama_squad.tasks.common.DatasetArguments`) with the options of
  ``create_dataset.py --task NAME``, a ``help`` on every field;
- ``build_dataset(args) -> datasets.DatasetDict``: ``train`` / ``validation`` / ``test`` splits whose rows hold the
  :data:`llama_squad.tasks.common.DATASET_COLUMNS` plus the task's own metadata columns;
- ``EXTRA_RESULT_COLUMNS``: the task's columns of a results row beyond :data:`llama_squad.results.RESULT_COLUMNS`;
- ``score_output(raw_output, example) -> list[dict]``: the scored results row(s) of one generated answer
  (one row per question; a DST domain-level example yields one row per slot);
- ``summarize(results: pandas.DataFrame) -> dict[str, float]``: the run's flat metrics.
- ``constraint_of(example, mode) -> AnswerSpec | None``: what ``--constrain mode`` lets the model answer.
"""

import importlib
from types import ModuleType

TASK_MODULES = {"squad_v2": "llama_squad.tasks.squad_v2", "multiwoz": "llama_squad.tasks.multiwoz"}


def get_task(name: str) -> ModuleType:
    """The task module called ``name`` (``squad_v2`` or ``multiwoz``)."""
    if name not in TASK_MODULES:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])
