r"""Build a chat-formatted prompt/completion dataset with JSON answers from raw SQuAD v2 or MultiWOZ data.

SQuAD v2 with the dev-split protocol (train on dev articles 0-24, test on 25-34):

    python create_dataset.py --task squad_v2 --train_file ../shared/data/squad_v2/dev-v2.0.json \
        --test_articles 25:35 --output_dir data/squad_v2_dev_split

The official train/dev files, or the Hub copy:

    python create_dataset.py --task squad_v2 --train_file train-v2.0.json --test_file dev-v2.0.json \
        --output_dir data/squad_v2
    python create_dataset.py --task squad_v2 --hub_dataset rajpurkar/squad_v2 --output_dir data/squad_v2

MultiWOZ 2.1 as slot-level questions (train on dev, test on test):

    python create_dataset.py --task multiwoz --train_file ../shared/data/multiwoz21/val.json.zip \
        --test_file ../shared/data/multiwoz21/test.json.zip --output_dir data/multiwoz21

`python create_dataset.py --task TASK --help` lists the task's options.
"""

import argparse
import logging
import sys
from pathlib import Path

from llama_squad.cli import exit_code_of, parse_dataclasses, read_recipe, setup_logging
from llama_squad.files import InputError, atomic_path
from llama_squad.tasks import get_task, task_names

logger = logging.getLogger("create_dataset")


def task_name(argv: list[str]) -> str | None:
    """The task of a command line: ``--task``, else the ``task`` key of the ``--config`` recipe, else None."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--task", choices=task_names(), default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    recipe = read_recipe(known.config) if known.config is not None else {}  # read even with --task: errors show here
    if known.task is not None or "task" not in recipe:
        return known.task
    if recipe["task"] not in task_names():
        raise InputError(f"--config {known.config}: task {recipe['task']!r}: choose one of {', '.join(task_names())}")
    return recipe["task"]


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse, before any work, an --output_dir that exists (without --overwrite) or lies under a file."""
    if not isinstance(output_dir, str) or not output_dir:
        raise InputError(f"--output_dir {output_dir!r}: give the path of the folder to write")
    path = Path(output_dir)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass --overwrite to replace it, or choose another path")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--output_dir {path}: {parent} is a file, not a folder; choose another --output_dir")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        name = task_name(argv)
    except InputError as e:
        logger.error("%s", e)
        return 1
    if name is None:
        print(__doc__)
        print(
            "error: --task is required (squad_v2 or multiwoz), or a 'task:' key in the --config recipe",
            file=sys.stderr,
        )
        return 2
    task = get_task(name)
    (args,) = parse_dataclasses([task.Arguments], argv, description=__doc__)
    logger.debug("arguments: %s", args)
    try:
        check_output_dir(args.output_dir, args.overwrite)  # 1. fail before the work, not after it
        dataset = task.build_dataset(args)  # 2. check the options; read, validate, split and format
        for split_name in [name for name, split in dataset.items() if len(split) == 0]:  # e.g. no validation split
            logger.info("%s: no %s examples: the split is left out", args.output_dir, split_name)
            del dataset[split_name]
        with atomic_path(args.output_dir, is_dir=True, overwrite=args.overwrite) as tmp:  # 3. save, all or nothing
            dataset.save_to_disk(str(tmp))
    except Exception as e:  # bad input or options, a full disk, no permission: one line; a bug: its traceback
        return exit_code_of(e, logger.error, where=args.output_dir, also=(ValueError,))
    counts = ", ".join(f"{split_name} {len(split)}" for split_name, split in dataset.items())
    logger.info("wrote %s (%s)", args.output_dir, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
