"""Shared plumbing of the top-level scripts: logging setup and dataclass argument parsing."""

import dataclasses
import logging
import sys


def log_format(rank: int | None = None) -> str:
    """The log line of every script; with ``rank``, tagged ``[rank N]`` (several processes share one terminal)."""
    where = f" [rank {rank}]" if rank is not None else ""
    return f"%(asctime)s{where} %(levelname)s %(name)s: %(message)s"


DATE_FORMAT = "%H:%M:%S"


def setup_logging(level: int = logging.INFO) -> None:
    """One log format for every script; quiets the chattiest libraries."""
    logging.basicConfig(level=level, format=log_format(), datefmt=DATE_FORMAT, stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def tag_logs_with_rank(rank: int) -> None:
    """Prefix this process's log lines (those of the handlers ``setup_logging`` installed) with ``[rank N]``."""
    formatter = logging.Formatter(log_format(rank), datefmt=DATE_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


# Options that were replaced, and what replaces them: a command or recipe written for an older version is told.
REPLACED_OPTIONS = {
    "quantization": "replaced by TRL's load_in_4bit (QLoRA: NF4 with double quantization, as --quantization 4bit "
    "was) and load_in_8bit: pass --load_in_4bit or --load_in_8bit (in a recipe, load_in_4bit: true)",
}


def parse_dataclasses(types, argv: list[str] | None = None):
    """Parse ``argv`` into instances of ``types`` with TRL's parser: ``--config recipe.yaml`` gives the values,
    command-line options override them, and unknown options or YAML keys are an error (naming the new option where
    one replaced them, see ``REPLACED_OPTIONS``)."""
    from trl import TrlParser

    parser = TrlParser(list(types))
    args = list(sys.argv[1:] if argv is None else argv)
    path = config_path(args)
    recipe = {}
    if path is not None:
        try:
            recipe = read_recipe(path)
        except ValueError as e:  # the message alone: TRL's usage line lists some 200 options
            parser.exit(2, f"{parser.prog}: error: {e}\n")
    declared = {f.name for cls in types for f in dataclasses.fields(cls)}
    for name, replacement in REPLACED_OPTIONS.items():
        if name in declared:
            continue
        if f"--{name}" in args or any(arg.startswith(f"--{name}=") for arg in args):
            parser.exit(2, f"{parser.prog}: error: --{name}: {replacement}\n")
        if name in recipe:
            parser.exit(2, f"{parser.prog}: error: --config {path}: {name}: {replacement}\n")
    try:
        return parser.parse_args_and_config(args=args)
    except ValueError as e:  # unknown YAML keys, values the dataclasses reject
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` ("" when the flag has none), or None without the flag."""
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config":
            path = argv[i + 1] if i + 1 < len(argv) else ""
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return path


def read_recipe(path: str) -> dict:
    """The option: value mapping of a ``--config`` YAML recipe; a missing, unreadable or malformed file, or one that
    is not a mapping, raises :class:`InputError` naming it."""
    import yaml

    from llama_squad.files import InputError

    if not path:
        raise InputError("--config needs a recipe file, e.g. --config configs/smoke.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(f"--config {path}: no such file (the shipped recipes are in configs/)") from None
    except IsADirectoryError:
        raise InputError(f"--config {path}: a folder, not a YAML recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(f"--config {path}: cannot read it ({reason}); pass the path of a YAML recipe") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(e, "problem", None) or " ".join(str(e).split())
        raise InputError(f"--config {path}: not valid YAML{at} ({reason}); fix the recipe") from None
    if not isinstance(recipe, dict):
        raise InputError(
            f"--config {path}: holds {'nothing' if recipe is None else 'a YAML ' + type(recipe).__name__}, not a "
            "mapping of option: value (see configs/)"
        )
    return recipe
