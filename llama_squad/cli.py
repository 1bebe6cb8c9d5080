"""Shared plumbing of the top-level scripts: logging setup and dataclass argument parsing."""

import argparse
import dataclasses
import errno
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

# Library lines that say nothing a user can act on, quieted before the libraries are imported: the kernels package's
# notice that it skips a trust check offline (on every start, even --help), and a deprecation inside transformers that
# PEFT and TRL call (repeated by every script).
logging.getLogger("kernels").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


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
    # accelerate imports DeepSpeed wherever it is installed, which warns on every start of a machine without a GPU
    # that it "was unable to detect" one; a warning worth keeping where there is a GPU to detect
    logging.getLogger("DeepSpeed").addFilter(_no_gpu_to_detect)


def _no_gpu_to_detect(record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Setting accelerator to CPU"):
        return True
    import torch

    return torch.cuda.is_available()


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


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` as the scripts show it: the description as written (its commands ready to paste), every option's
    help with its default."""


def dataclass_parser(types, description: str | None = None):
    """TRL's parser of ``types`` (``--config recipe.yaml`` and the dataclasses' fields as options), whose ``--help``
    opens with ``description`` (the script's docstring)."""
    from trl import TrlParser

    return TrlParser(list(types), description=description, formatter_class=HelpFormatter)


def parse_dataclasses(types, argv: list[str] | None = None, description: str | None = None):
    """Parse ``argv`` into instances of ``types`` with TRL's parser: ``--config recipe.yaml`` gives the values,
    command-line options override them, and unknown options or YAML keys are an error (naming the new option where
    one replaced them, see ``REPLACED_OPTIONS``, or the closest one). ``description``: what ``--help`` opens with."""
    parser = dataclass_parser(types, description)
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
    unknown = unknown_option(args, option_strings(parser))
    if unknown:
        parser.exit(2, f"{parser.prog}: error: {unknown}\n")
    for key in recipe:
        if key not in declared:
            suggestion = did_you_mean(str(key), sorted(declared))
            parser.exit(2, f"{parser.prog}: error: --config {path}: unknown key {key!r}{suggestion}\n")
    try:
        return parser.parse_args_and_config(args=args)
    except ValueError as e:  # unknown YAML keys, values the dataclasses reject
        parser.exit(2, f"{parser.prog}: error: {e}\n")


def option_strings(parser) -> list[str]:
    """Every ``--option`` an argparse parser takes."""
    return sorted(o for action in parser._actions for o in action.option_strings if o.startswith("--"))


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean X?)`` with the closest of ``choices`` to ``name``, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_option(argv: list[str], known: list[str]) -> str | None:
    """The message for the first ``--option`` of ``argv`` that is none of ``known`` (nor, as argparse allows, a
    beginning of exactly one of them), naming the closest known one; None when every option is known."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        if name in known or name == "--config" or sum(option.startswith(name) for option in known) == 1:
            continue
        return f"unknown option {name}{did_you_mean(name, known)}"
    return None


def parse_strictly(parser, argv: list[str] | None = None):
    """``parser.parse_args(argv)``, but an unknown option is one line naming it and the closest known one (argparse
    says "unrecognized arguments" after a usage block)."""
    args = list(sys.argv[1:] if argv is None else argv)
    unknown = unknown_option(args, option_strings(parser))
    if unknown:
        parser.exit(2, f"{parser.prog}: error: {unknown}\n")
    return parser.parse_args(args)


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


# ---------------------------------------------------------------------------------------------------- errors

# What to do about the OS errors a user can fix, by errno: every entry point says it in one line, naming the path.
OS_ERROR_FIXES = {
    errno.ENOSPC: "free some space on that disk{free}, or write to another disk",
    errno.EDQUOT: "free some space, or write to another disk",
    errno.EROFS: "write to a folder on a writable disk",
    errno.EACCES: "make it writable (or readable, for an input), or choose another path",
    errno.EPERM: "make it writable (or readable, for an input), or choose another path",
    errno.ENOTDIR: "a part of this path is a file: choose another path",
    errno.EISDIR: "a folder where a file is wanted: choose another path",
    errno.EEXIST: "remove it, or choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the limit (ulimit -n) and run again",
}
# Libraries that write from C++ or Rust (torch.save, safetensors) raise other errors for the same causes: the
# words of their messages that tell which.
FOREIGN_OS_ERRORS = (
    ("No space left on device", errno.ENOSPC),
    ("StorageFull", errno.ENOSPC),
    ("Disk quota exceeded", errno.EDQUOT),
    ("Read-only file system", errno.EROFS),
    ("ReadOnlyFilesystem", errno.EROFS),
    ("Permission denied", errno.EACCES),
    ("PermissionDenied", errno.EACCES),
)
LOW_DISK_BYTES = 1 << 20  # less free space than this where a write failed: the disk was full


def os_error_of(error: BaseException, where: str | os.PathLike | None = None) -> OSError | None:
    """The OS error behind ``error``: itself, one it was raised from, or one that a library's message names (torch's
    ``PytorchStreamWriter ... file write failed`` says no more: where ``where``'s disk has under 1 MiB free, the disk
    was full). None for other errors."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    for words, code in FOREIGN_OS_ERRORS:
        if words in text:
            return OSError(code, os.strerror(code), str(where) if where else None)
    if "file write failed" in text and where is not None and free_bytes(where) < LOW_DISK_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
    return None


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent); a large number if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62


def describe_os_error(error: OSError, where: str | os.PathLike | None = None) -> str:
    """One line for an OS error: the path (the error's, else ``where``), what happened and what to do. An error that
    carries only a message (ours: ``FileExistsError("... pass --overwrite ...")``) is that message."""
    if error.errno is None and error.filename is None:
        return str(error)
    path = error.filename or where
    fix = OS_ERROR_FIXES.get(error.errno)
    if error.errno in (errno.EEXIST, errno.ENOTDIR) and path and _file_in_the_way(path):
        fix = f"{_file_in_the_way(path)} is a file, not a folder: choose another path"
    if fix is not None and "{free}" in fix:
        free = free_bytes(path) if path else None
        fix = fix.format(free=f" ({free / 1e6:.1f} MB free)" if free is not None and free < 1 << 40 else "")
    reason = error.strerror or str(error)
    text = f"{reason}; {fix}" if fix else reason
    return f"{path}: {text}" if path else text


def _file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file that stands where ``path`` (a folder to make) or one of its parents should be, if any."""
    for part in (Path(path), *Path(path).parents):
        if part.is_file():
            return part
    return None


def user_error(error: BaseException, where: str | os.PathLike | None = None) -> str | None:
    """The one-line message of an error the user can fix, or None for a fault of the program (which keeps its
    traceback): bad input (:class:`llama_squad.files.InputError`, whose message names the file and the fix) or an OS
    error (a full disk, a read-only folder, a file where a folder is wanted; ``where``: the path to name when the
    error names none, such as the output folder)."""
    from llama_squad.files import InputError

    if isinstance(error, InputError):
        return str(error)
    os_error = os_error_of(error, where)
    return describe_os_error(os_error, where) if os_error is not None else None


def exit_code_of(
    error: BaseException,
    report: Callable[[str], None],
    where: str | os.PathLike | None = None,
    also: tuple[type[BaseException], ...] = (),
) -> int:
    """What an entry point does with an error that stopped it: the one-line message of an error the user can fix
    (:func:`user_error`, or one of the types ``also`` names) goes to ``report`` and the exit code is 1; a fault of the
    program is raised again, with its traceback."""
    message = str(error) if isinstance(error, also) else user_error(error, where)
    if message is None:
        raise error
    report(message)
    return 1
