"""The SQuAD v2 dataset: sources read, split by article, every question formatted as a chat example."""

import logging
import random

from datasets import Dataset, DatasetDict

from llama_squad.tasks.squad_v2.options import NAME, Arguments, check_arguments, parse_slice
from llama_squad.tasks.squad_v2.prompts import build_messages
from llama_squad.tasks.squad_v2.readers import Record, read_hub_split, read_squad

logger = logging.getLogger(__name__)


def split_by_article(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out whole articles, drawn with ``seed``: (kept, held_out). No article is in both."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--validation_fraction {fraction}: must be in [0, 1)")
    articles = sorted({r.article for r in records})
    n_held = round(fraction * len(articles))
    if fraction > 0 and len(articles) > 1:
        n_held = max(1, n_held)
    held = set(random.Random(seed).sample(articles, n_held))
    return [r for r in records if r.article not in held], [r for r in records if r.article in held]


def to_dataset(records: list[Record], prompt_style: str, system_prompt: str) -> Dataset:
    """The chat dataset of ``records``: prompt/completion messages plus the metadata columns."""
    columns: dict[str, list] = {
        k: []
        for k in (
            "id",
            "task",
            "prompt",
            "completion",
            "question",
            "answers",
            "title",
            "context",
            "is_impossible",
            "article",
        )
    }
    for r in records:
        prompt, completion = build_messages(r, prompt_style, system_prompt)
        columns["id"].append(r.id)
        columns["task"].append(NAME)
        columns["prompt"].append(prompt)
        columns["completion"].append(completion)
        columns["question"].append(r.question)
        columns["answers"].append(list(r.answers))
        columns["title"].append(r.title)
        columns["context"].append(r.context)
        columns["is_impossible"].append(not r.answers)
        columns["article"].append(r.article)
    return Dataset.from_dict(columns)


def build_dataset(args: Arguments) -> DatasetDict:
    """Check the options, read the sources, split them by article and format every question as a chat example."""
    check_arguments(args)
    seen: set[str] = set()
    if args.hub_dataset:
        train = read_hub_split(args.hub_dataset, "train", seen, args.skip_invalid)
        test = read_hub_split(args.hub_dataset, "validation", seen, args.skip_invalid)
    else:  # --train_file, with --test_file or --test_articles (check_arguments made sure)
        train = read_squad(args.train_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        if args.test_file:
            test = read_squad(args.test_file, skip_invalid=args.skip_invalid, seen_ids=seen)
        else:
            chosen = set(range(max(r.article for r in train) + 1)[parse_slice(args.test_articles)])
            test = [r for r in train if r.article in chosen]
            train = [r for r in train if r.article not in chosen]
            if not test:
                raise ValueError(
                    f"--test_articles {args.test_articles}: selects no article with valid questions of "
                    f"{args.train_file} (articles are numbered from 0 in file order)"
                )
    if not train:
        raise ValueError("no training questions are left after carving out the test articles")
    train, validation = split_by_article(train, args.validation_fraction, args.seed)
    if args.max_train_questions is not None:
        train = train[: args.max_train_questions]
    splits = {"train": train, "validation": validation, "test": test}
    for name, records in splits.items():
        answerable = sum(bool(r.answers) for r in records)
        logger.info(
            "%-10s %6d questions, %3d articles, %5.1f%% answerable",
            name,
            len(records),
            len({r.article for r in records}),
            100 * answerable / max(1, len(records)),
        )
    return DatasetDict(
        {name: to_dataset(records, args.prompt, args.system_prompt) for name, records in splits.items()}
    )
