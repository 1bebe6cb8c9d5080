"""What the task's scores while training cost: train.py with and without ``--eval_questions N`` (every evaluation then
also answers N validation questions), the same steps, data and seed, each in a fresh process, in one run.

    # the embedded SmolLM2-135M-Instruct on the dev-split protocol, 8 steps, an evaluation every 4
    python benchmarks/bench_task_metrics.py --eval_questions 64 --max_steps 8 --eval_steps 4

Prints each arm's wall time, the ratio, and the seconds and questions/s of each task evaluation (the figures
train.py logs as eval_task_seconds and eval_task_questions_per_s).
"""

import json
import sys
import tempfile
from pathlib import Path

from common import DEV, missing_data
from common.options import add_run_options, benchmark_parser
from common.report import print_header, print_table, write_json
from common.scripts import create_dataset_argv, run_script


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="embedded", help="model_name_or_path")
    parser.add_argument("--eval_questions", type=int, default=64, help="validation questions each evaluation asks")
    parser.add_argument("--max_steps", type=int, default=8)
    parser.add_argument("--eval_steps", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4, help="per-device train and eval batch size")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_eval_examples", type=int, default=32, help="validation examples of the loss")
    parser.add_argument("--work_dir", default=None, help="keep the data and runs here (default: temp)")
    add_run_options(parser, seed=42)
    return parser.parse_args(argv)


def train_argv(args, data: Path, out: Path, eval_questions: int) -> list[str]:
    return [
        "train.py", "--model_name_or_path", args.model, "--dataset_path", str(data), "--output_dir", str(out),
        "--max_steps", str(args.max_steps), "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps),
        "--save_strategy", "no", "--per_device_train_batch_size", str(args.batch_size),
        "--per_device_eval_batch_size", str(args.batch_size), "--max_eval_examples", str(args.max_eval_examples),
        "--max_train_examples", str(args.max_steps * args.batch_size), "--max_length", "1024", "--lora_r", "16",
        "--lora_alpha", "32", "--learning_rate", "5e-4", "--report_to", "none", "--seed", str(args.seed),
        "--merge", "false", "--resume_from_checkpoint", "no", "--disable_tqdm", "true",
        "--eval_questions", str(eval_questions), "--max_new_tokens", str(args.max_new_tokens),
    ]  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing_data(DEV):
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        # 1. The dev-split protocol's dataset.
        data = work / "data"
        if not data.exists():
            run_script(create_dataset_argv(data, args.seed))
        # 2. The two arms, each in a fresh process: the loss only, then the loss and the task's scores.
        seconds = {}
        for label, n in (("loss only", 0), (f"+ {args.eval_questions} questions", args.eval_questions)):
            seconds[label] = run_script(train_argv(args, data, work / label.replace(" ", "_"), n))
        history = json.loads((work / label.replace(" ", "_") / "trainer_state.json").read_text())["log_history"]
    # 3. The figures.
    evaluations = [e for e in history if "eval_task_seconds" in e]
    base, with_scores = seconds.values()
    print_header(f"train.py, {args.max_steps} steps, an evaluation every {args.eval_steps}, model {args.model}")
    print_table([("arm", "<20"), ("seconds", ">9.1f")], [[label, s] for label, s in seconds.items()])
    print(f"with the task's scores: {with_scores / base:.2f}x the time of the loss alone")
    print_table(
        [("step", ">6"), ("task seconds", ">13.1f"), ("questions/s", ">12.2f")],
        [[e["step"], e["eval_task_seconds"], e["eval_task_questions_per_s"]] for e in evaluations],
    )
    if args.json_out:
        write_json(args.json_out, {"seconds": seconds, "ratio": with_scores / base, "evaluations": evaluations,
                                   "args": vars(args)})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
