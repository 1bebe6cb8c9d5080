"""The options of ``create_dataset.py --task multiwoz`` and their checks."""

from dataclasses import dataclass, field

from llama_squad.tasks.common import DatasetArguments, common_option_problems
from llama_squad.tasks.multiwoz.prompts import GRANULARITIES

NAME = "multiwoz"


@dataclass
class Arguments(DatasetArguments):
    """Options of ``create_dataset.py --task multiwoz``."""

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training dialogues: a MultiWOZ 2.1/2.4 file in the data.json layout (ConvLab-2's val.json.zip "
            "too; .zip is read directly), or a MultiWOZ 2.2 split folder of dialogues_*.json (or one such file)."
        },
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Validation dialogues (any layout of --train_file); default: carved out of the training "
                  "dialogues with --validation_fraction."},
    )  # fmt: skip
    test_file: str | None = field(default=None, metadata={"help": "Test dialogues (any layout of --train_file)."})
    data_file: str | None = field(
        default=None,
        metadata={
            "help": "The official MultiWOZ 2.1/2.4 layout instead of --train_file/--test_file: one data.json holding "
            "every dialogue; --val_list and --test_list pick the validation and test dialogues, the rest trains."
        },
    )
    val_list: str | None = field(
        default=None, metadata={"help": "With --data_file: valListFile, one dialogue id a line."}
    )
    test_list: str | None = field(
        default=None, metadata={"help": "With --data_file: testListFile, one dialogue id a line."}
    )
    schema_file: str | None = field(
        default=None,
        metadata={"help": "A MultiWOZ 2.2 schema.json for slot descriptions and allowed values; default: a built-in "
                  "copy of MultiWOZ 2.2's."},
    )  # fmt: skip
    validation_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of the training dialogues held out (seeded, whole dialogues) as the validation "
                  "split when no --validation_file or --val_list is given; 0: none."},
    )  # fmt: skip
    max_dialogues_per_split: int | None = field(
        default=None, metadata={"help": "Keep only the first N dialogues of each split (quick runs)."}
    )
    granularity: str = field(
        default="slot",
        metadata={
            "help": "slot: one question per (user turn, slot), 30 per turn. domain: one question per (user turn, "
            "domain) answered with a JSON object of all its slots, 5 per turn (fewer generations).",
            "choices": GRANULARITIES,
        },
    )
    list_categorical_values: bool = field(
        default=False,
        metadata={"help": "Name the allowed values of categorical slots (from the schema) in the question. "
                  "MultiWOZ 2.1 gold values do not always use the schema's spelling (night club, nightclub)."},
    )  # fmt: skip
    keep_empty_fraction: float = field(
        default=1.0,
        metadata={"help": 'Training split only: keep this fraction of the questions whose answer is "?" (seeded); '
                  "1: all. Downsampling them tends to cost precision."},
    )  # fmt: skip
    max_length: int = field(
        default=1024,
        metadata={"help": "Token budget of a whole example (chat template, prompt and answer): the dialogue history "
                  "is cut from the left, oldest turns first, never the current user turn; 0: no limit."},
    )  # fmt: skip
    tokenizer_name_or_path: str = field(
        default="embedded",
        metadata={"help": "The tokenizer that measures --max_length: a folder, a Hub id, or 'embedded' (SmolLM2)."},
    )
    skip_invalid: bool = field(
        default=False,
        metadata={"help": "Skip (count and log) invalid dialogues instead of stopping at the first one."},
    )
    task: str = field(default=NAME, metadata={"help": "The task: multiwoz."})


def check_sources(args: Arguments) -> None:
    """Raise one ValueError if the input options do not make one layout: --data_file with its list files, or
    --train_file and --test_file (and maybe --validation_file)."""
    problems = []
    if args.data_file:
        if args.train_file or args.test_file or args.validation_file:
            problems.append("give either --data_file (with --val_list/--test_list) or --train_file/--test_file")
        if not args.test_list:
            problems.append("--data_file needs --test_list (testListFile) to know the test dialogues")
    else:
        for flag, value in (("val_list", args.val_list), ("test_list", args.test_list)):
            if value:
                problems.append(
                    f"--{flag} picks dialogues out of --data_file: pass --data_file too, or give the "
                    f"{'validation' if flag == 'val_list' else 'test'} dialogues as a file"
                )
        if not args.train_file:
            if args.test_file or args.validation_file:
                problems.append("no training dialogues: pass --train_file")
            else:
                problems.append(
                    "no input: pass --train_file and --test_file (MultiWOZ files or 2.2 split folders), "
                    "or --data_file with --val_list and --test_list"
                )
        elif not args.test_file:
            problems.append("no test dialogues: pass --test_file")
    if problems:
        raise ValueError("; ".join(problems))


def check_arguments(args: Arguments) -> None:
    """Raise one ValueError naming every bad option (type, range, combination), before any file is read."""
    problems = common_option_problems(args)
    if args.granularity not in GRANULARITIES:
        problems.append(f"--granularity {args.granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    if not 0 <= args.keep_empty_fraction <= 1:
        problems.append(f"--keep_empty_fraction {args.keep_empty_fraction}: must be in [0, 1] (1: keep all)")
    if args.max_dialogues_per_split is not None and args.max_dialogues_per_split < 1:
        problems.append(
            f"--max_dialogues_per_split {args.max_dialogues_per_split}: give a positive number, or leave it out"
        )
    if args.max_length < 0:
        problems.append(f"--max_length {args.max_length}: give a token budget (e.g. 1024), or 0 for no limit")
    try:
        check_sources(args)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))
