"""Scripts in fresh processes: the repository's (create_dataset.py, train.py) as a user runs them, and a benchmark's
own arms (in N data-parallel processes: accelerate launch), which write their figures to a file per process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import DEV, REPO, TEST_ARTICLES


def run_script(argv: list[str]) -> float:
    """Run a script of the repository (``argv[0]``, relative to it) in a fresh process, the command said on stderr;
    the seconds it took."""
    start = time.perf_counter()
    print("$", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, *argv], check=True, cwd=REPO)
    return time.perf_counter() - start


def create_dataset_argv(output_dir: Path, seed: int, hub_dataset: str | None = None) -> list[str]:
    """create_dataset.py's SQuAD v2 dataset: the dev-split protocol's (test articles 25:35 of dev-v2.0.json), or
    ``hub_dataset``'s splits."""
    argv = ["create_dataset.py", "--task", "squad_v2", "--output_dir", str(output_dir), "--seed", str(seed)]
    if hub_dataset:
        return argv + ["--hub_dataset", hub_dataset]
    return argv + ["--train_file", str(DEV), "--test_articles", TEST_ARTICLES]


def train_argv(args, data_dir: Path, output_dir: Path, batch_size: int, accumulation: int) -> list[str]:
    """train.py training a LoRA adapter as the adapter options say (:func:`common.options.add_adapter_options`, and
    --seed) on ``data_dir`` into ``output_dir``: no evaluation, no checkpoints, not merged."""
    argv = [
        "train.py", "--model_name_or_path", args.model, "--dataset_path", str(data_dir),
        "--output_dir", str(output_dir),
        "--seed", str(args.seed), "--num_train_epochs", str(args.epochs), "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", str(accumulation),
        "--learning_rate", str(args.learning_rate), "--lora_r", str(args.lora_r), "--lora_alpha", str(2 * args.lora_r),
        "--eval_strategy", "no", "--save_strategy", "no", "--merge", "false", "--report_to", "none",
        "--resume_from_checkpoint", "no", "--logging_steps", "10", "--max_eval_examples", "0",
    ]  # fmt: skip
    if args.train_questions:  # else all
        argv += ["--max_train_examples", str(args.train_questions)]
    return argv


def run_processes(
    argv: list[str], result_file: Path, processes: int = 1, threads: int | None = None, timeout: float | None = None
) -> list[dict]:
    """Run the Python script ``argv`` in a fresh process, or in ``processes`` local processes (accelerate launch:
    torchrun underneath; DDP over gloo without a GPU, where the Trainer trains on the CPU, over NCCL with one GPU
    each), each with ``threads`` threads (OMP_NUM_THREADS) when given, killed after ``timeout`` seconds
    (``subprocess.TimeoutExpired``); the figures each process wrote to its :func:`rank_file`."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    launch = [sys.executable]
    if processes > 1:
        import socket

        with socket.socket() as s:  # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--num_cpu_threads_per_process", str(threads), "--main_process_port", str(port)]
    subprocess.run([*launch, *argv], check=True, env=env, timeout=timeout)
    return [json.loads(rank_file(result_file, k).read_text(encoding="utf-8")) for k in range(processes)]


def rank_file(result_file: str | Path, rank: int) -> Path:
    """Where process ``rank`` of a :func:`run_processes` run writes its figures (JSON)."""
    return Path(f"{result_file}.{rank}")
