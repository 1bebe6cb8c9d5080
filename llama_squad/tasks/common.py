"""What every task shares: the dataset's columns and options, the helpers that check them, and percentages."""

import dataclasses
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

# Columns every dataset row has. ``prompt`` is the system + first user message; ``completion`` is the assistant
# answer (multi-turn: assistant, user, assistant, ... where the user turns are follow-up instructions and every
# assistant turn is a training target); ``answers`` lists every gold answer ([] = no answer, the target is "?").
DATASET_COLUMNS = ("id", "task", "prompt", "completion", "question", "answers")

DEFAULT_SYSTEM_PROMPT = (
    "You are a precise assistant. Answer only from the text you are given, and say when it holds no answer."
)


@dataclass
class DatasetArguments:
    """Options shared by every task of ``create_dataset.py``."""

    output_dir: str = field(metadata={"help": "Folder to write the DatasetDict to (datasets.save_to_disk)."})
    task: str | None = field(default=None, metadata={"help": "Which task to build: squad_v2 or multiwoz."})
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System message of every prompt. An empty string leaves the system message out."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the validation-split draw."})
    overwrite: bool = field(default=False, metadata={"help": "Replace output_dir if it already exists."})


_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def json_type(value) -> str:
    """What a JSON value is, for error messages: ``a string ('abc')``, ``null``."""
    if value is None:
        return "null"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{_JSON_TYPES.get(type(value), type(value).__name__)} ({shown})"


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def _is_a(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if isinstance(value, bool) and kind is not bool:  # bool is a subclass of int in Python, not a number here
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def option_type_problems(args) -> list[str]:
    """The options of a dataclass whose value is not of the field's type, one line each: a YAML recipe can give a
    list or a number where the command line would only give text."""
    problems = []
    hints = typing.get_type_hints(type(args))  # not Field.type: HfArgumentParser rewrites it (drops "| None")
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        if not any(_is_a(value, kind) for kind in kinds):
            expected = " or ".join(_TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)
            problems.append(f"--{f.name} {value!r}: expected {expected}")
    return problems


def common_option_problems(args: DatasetArguments) -> list[str]:
    """The problems of the options every task shares, one line each; raises ValueError at once on values of the
    wrong type (the task's own checks compare values of the right type)."""
    problems = option_type_problems(args)
    if problems:
        raise ValueError("; ".join(problems))
    if not 0 <= args.validation_fraction < 1:
        problems.append(
            f"--validation_fraction {args.validation_fraction}: must be in [0, 1), e.g. 0.05 (0: no validation split)"
        )
    return problems


def dataset_folder_problem(dataset_path: str) -> str | None:
    """Why ``dataset_path`` is not a dataset folder written by create_dataset.py (it has no ``dataset_dict.json``), or
    None when it is one."""
    if (Path(dataset_path) / "dataset_dict.json").exists():
        return None
    return (
        f"--dataset_path {dataset_path}: not a dataset folder written by create_dataset.py (no dataset_dict.json): "
        "run create_dataset.py first"
    )


def load_dataset_folder(dataset_path: str | os.PathLike):
    """The ``DatasetDict`` of a create_dataset.py folder (``datasets.load_from_disk``), its empty splits left out.

    Versions before this one saved an empty validation split (``--validation_fraction 0``, JSON Lines without titles):
    a split folder without a data file, on which ``load_from_disk`` fails (IndexError). Such a split reads as absent,
    as create_dataset.py now leaves it out.
    """
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        return load_from_disk(str(dataset_path))
    except IndexError:  # a split without data files: read the others one by one
        pass
    folder = Path(dataset_path)
    splits = {}
    for name in json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]:
        state = json.loads((folder / name / "state.json").read_text(encoding="utf-8"))
        if state.get("_data_files"):
            splits[name] = Dataset.load_from_disk(str(folder / name))
        else:
            logger.info(
                "%s: the %s split is empty (saved by an older create_dataset.py): read as absent", folder, name
            )
    return DatasetDict(splits)


def percent(part, whole=None) -> float:
    """``part`` out of ``whole`` in percent, NaN when ``whole`` is 0; without ``whole``, the share of ``part``'s rows
    (a Series: its mean) in percent, NaN when it has no rows.

    The two forms round differently in the last digit (100 * a / b, 100 * mean): each task keeps the one its
    published metrics were computed with.
    """
    if whole is None:
        return 100.0 * float(part.mean()) if len(part) else float("nan")
    return 100.0 * part / whole if whole else float("nan")
