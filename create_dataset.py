"""Build a chat-formatted prompt/completion dataset with JSON answers from raw SQuAD v2 or MultiWOZ data.

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

from llama_squad.cli import parse_dataclasses, setup_logging
from llama_squad.io import InputError, atomic_path
from llama_squad.tasks import TASK_MODULES, get_task

logger = logging.getLogger("create_dataset")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", choices=list(TASK_MODULES), default=None)
    known, _ = pre.parse_known_args(argv)
    if known.task is None:
        print(__doc__)
        print("error: --task is required (squad_v2 or multiwoz)", file=sys.stderr)
        return 2
    task = get_task(known.task)
    (args,) = parse_dataclasses([task.Arguments], argv)
    setup_logging()
    logger.info("arguments: %s", args)
    try:
        dataset = task.build_dataset(args)  # 1. read, validate, split and format
        with atomic_path(args.output_dir, is_dir=True, overwrite=args.overwrite) as tmp:  # 2. save, all or nothing
            dataset.save_to_disk(str(tmp))
    except (InputError, ValueError, FileExistsError) as e:
        logger.error("%s", e)
        return 1
    counts = ", ".join(f"{name} {len(split)}" for name, split in dataset.items())
    logger.info("wrote %s (%s)", args.output_dir, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
