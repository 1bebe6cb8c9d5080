"""The options of ``create_dataset.py --task squad_v2``, checked together before any file is read."""

from dataclasses import dataclass, field

from llama_squad.tasks.common import DatasetArguments, common_option_problems

NAME = "squad_v2"
PROMPT_STYLES = ("single_turn", "multi_turn")


@dataclass
class Arguments(DatasetArguments):
    """Options of ``create_dataset.py --task squad_v2``."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training questions: official SQuAD v2 JSON (train-v2.0.json, dev-v2.0.json) or JSON Lines."
        },
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Test questions (official JSON or JSON Lines); or carve them with --test_articles."},
    )
    hub_dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id such as rajpurkar/squad_v2: its train split trains, its validation split tests."
        },
    )
    test_articles: str | None = field(
        default=None,
        metadata={
            "help": "Carve the test split out of --train_file by article index, START:END (Python slice). "
            "25:35 with dev-v2.0.json is the dev-split protocol: train on articles 0-24, test on 25-34."
        },
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Fraction of the training articles held out as the validation split (whole articles; 0: none)."
        },
    )
    prompt: str = field(
        default="single_turn",
        metadata={
            "help": "single_turn: one instruction, the answer in JSON. multi_turn: is the answer there? then the "
            "span, then the JSON; every assistant turn is a training target.",
            "choices": PROMPT_STYLES,
        },
    )
    skip_invalid: bool = field(
        default=False,
        metadata={
            "help": "Skip (count and log) invalid records instead of stopping at the first one: a bad question alone, "
            "a paragraph or article that is not an object or has no question or paragraph list whole."
        },
    )
    max_train_questions: int | None = field(
        default=None, metadata={"help": "Keep only the first N training questions (quick runs)."}
    )


def check_arguments(args: Arguments) -> None:
    """Raise one ValueError naming every bad option (type, range, combination), before any file is read."""
    problems = common_option_problems(args)
    if args.prompt not in PROMPT_STYLES:
        problems.append(f"--prompt {args.prompt!r}: choose one of {', '.join(PROMPT_STYLES)}")
    if args.max_train_questions is not None and args.max_train_questions < 1:
        problems.append(
            f"--max_train_questions {args.max_train_questions}: give a positive number, or leave it out for all"
        )
    if args.test_articles is not None:
        try:
            chosen = parse_slice(args.test_articles)
        except ValueError as e:
            problems.append(str(e))
        else:
            start, stop = chosen.start, chosen.stop
            if start is not None and stop is not None and (start < 0) == (stop < 0) and start >= stop:
                problems.append(f"--test_articles {args.test_articles}: selects no article (START must be below END)")
    if args.hub_dataset:
        if args.train_file or args.test_file:
            problems.append("give either --hub_dataset or --train_file/--test_file, not both")
        if args.test_articles is not None:
            problems.append(
                "--test_articles carves the test split out of --train_file; --hub_dataset tests on its "
                "validation split: leave --test_articles out"
            )
    elif args.train_file:
        if args.test_file and args.test_articles is not None:
            problems.append("give either --test_file or --test_articles, not both")
        elif not args.test_file and args.test_articles is None:
            problems.append("no test questions: pass --test_file, or carve them out with --test_articles START:END")
    elif args.test_file or args.test_articles is not None:
        problems.append("no training questions: pass --train_file (official SQuAD JSON or .jsonl)")
    else:
        problems.append("no input: pass --train_file (official SQuAD JSON or .jsonl) or --hub_dataset")
    if problems:
        raise ValueError("; ".join(problems))


def parse_slice(text: str) -> slice:
    """``"25:35"`` → ``slice(25, 35)``; either end may be left out."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return slice(*(int(p) if p.strip() else None for p in parts))
    except ValueError:
        raise ValueError(f"--test_articles {text!r}: expected START:END, e.g. 25:35") from None
