"""Argument groups that several benchmarks take: the same names and meanings wherever they appear."""

import argparse


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose --help shows the benchmark's docstring as written (its commands ready to paste)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_options(parser: argparse.ArgumentParser, seed: int, seed_help: str = "random seed") -> None:
    """--seed and --json_out."""
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=seed, help=seed_help)
    group.add_argument("--json_out", default=None, help="also write the figures to this JSON file")


def add_generation_options(
    parser: argparse.ArgumentParser,
    batch_size: int | None,
    max_new_tokens: int | None,
    batch_help: str = "questions per generate call",
    tokens_help: str = "greedy decoding stops after this many tokens",
) -> None:
    """--batch_size and --max_new_tokens of greedy generation."""
    group = parser.add_argument_group("generation (greedy)")
    group.add_argument("--batch_size", type=int, default=batch_size, help=batch_help)
    group.add_argument("--max_new_tokens", type=int, default=max_new_tokens, help=tokens_help)


def add_adapter_options(parser: argparse.ArgumentParser, model_help: str, train_questions: int, questions_help: str):
    """How a LoRA adapter is trained through train.py (:func:`common.scripts.train_argv` reads these): --model,
    --train_questions, --epochs, --max_steps, --learning_rate, --lora_r, --work_dir."""
    group = parser.add_argument_group("adapter training (train.py)")
    group.add_argument("--model", default="embedded", help=model_help)
    group.add_argument("--train_questions", type=int, default=train_questions, help=questions_help)
    group.add_argument("--epochs", type=float, default=1.0)
    group.add_argument("--max_steps", type=int, default=-1, help="instead of --epochs (quick checks)")
    group.add_argument("--learning_rate", type=float, default=5e-4)
    group.add_argument("--lora_r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    group.add_argument("--work_dir", default=None, help="keep the data, adapters and results here (default: temp)")
    return group
