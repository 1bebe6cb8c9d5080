"""Shared plumbing of the top-level scripts: logging setup and dataclass argument parsing."""

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """One log format for every script; quiets the chattiest libraries."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_dataclasses(types, argv: list[str] | None = None):
    """Parse ``argv`` into instances of ``types`` with TRL's parser: ``--config recipe.yaml`` gives the values,
    command-line options override them, and unknown options or YAML keys are an error."""
    from trl import TrlParser

    parser = TrlParser(list(types))
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return parser.parse_args_and_config(args=args)
    except ValueError as e:  # unknown options, unknown YAML keys, values the dataclasses reject
        parser.error(str(e))
