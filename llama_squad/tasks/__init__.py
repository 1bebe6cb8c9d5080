"""The tasks: each package under ``tasks/`` holds one :class:`llama_squad.tasks.base.Task` (its data, its answers'
form and scoring, and how tables, the chat and model cards show it), registered here by name.

A new task is one package that defines ``TASK`` (an instance of a :class:`~llama_squad.tasks.base.Task` subclass)
and one line in :data:`TASKS`.
"""

import importlib

from llama_squad.tasks.base import Task

# --task NAME -> the module whose TASK it is
TASKS = {
    "squad_v2": "llama_squad.tasks.squad_v2",
    "multiwoz": "llama_squad.tasks.multiwoz",
}


def task_names() -> list[str]:
    """The names of the registered tasks (``--task`` choices)."""
    return list(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK


def all_tasks() -> list[Task]:
    """Every registered task, in registry order."""
    return [get_task(name) for name in TASKS]
