"""A/B of learned pause tokens: the same data, steps and seed, trained and tested with N = 0 and with N > 0 pause
tokens (before the answer in the assistant turn, and at the end of the user turn), in one run.

    # CPU, the embedded SmolLM2-135M-Instruct (~1.5 h on 2 cores): 200 training questions of dev articles 0-24,
    # one epoch in batches of 4 x 2 (a batch of 8 long questions can pass 20 GB), the first 300 of articles 25-34
    python benchmarks/ab_pause_tokens.py --train_questions 200 --batch_size 4 --gradient_accumulation_steps 2 \\
        --test_questions 300 --json_out ab_pause.json

    # a quick check of the script (a few minutes)
    python benchmarks/ab_pause_tokens.py --train_questions 64 --test_questions 16 --max_steps 4

    # GPU, llama-squad's setting (Llama-3-8B-Instruct, QLoRA, the whole SQuAD v2 train set, tested on dev)
    python benchmarks/ab_pause_tokens.py --model meta-llama/Meta-Llama-3-8B-Instruct \\
        --config configs/llama3_8b_qlora.yaml --hub_dataset rajpurkar/squad_v2 --train_questions 0 \\
        --test_questions 0 --batch_size 8 --learning_rate 1e-4 --pause_tokens 8

Every arm runs the real scripts (train.py, then test.py) in a fresh process on one dataset built once by
create_dataset.py; only --pause_tokens and --pause_position differ. Prints EM/F1 with the HasAns/NoAns split and
valid JSON per arm, and writes them (and the commands) to --json_out.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

from common import DEV, missing_data
from common.options import add_adapter_options, add_run_options, benchmark_parser
from common.report import print_table, write_json
from common.scripts import create_dataset_argv, run_script, train_argv

METRICS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "valid_json", "total")


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    add_adapter_options(parser, "model_name_or_path of every arm", 1000, "seeded sample of the train split; 0: all")
    parser.add_argument("--config", default=None, help="a train.py recipe for every arm (its options, then ours)")
    parser.add_argument("--hub_dataset", default=None, help="SQuAD v2 from the Hub instead of the dev-split protocol")
    parser.add_argument("--test_questions", type=int, default=300, help="the first N test questions; 0: all")
    parser.add_argument("--pause_tokens", type=int, default=8, help="N of the pause arms")
    parser.add_argument("--positions", nargs="+", default=["assistant", "user"], help="pause arms to run")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per micro-batch")
    parser.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="micro-batches per step (less memory per step)"
    )
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--eval_batch_size", type=int, default=16)
    add_run_options(parser, seed=42)
    return parser.parse_args(argv)


def pause_train_argv(args, data_dir: Path, out: Path, pause_tokens: int, position: str) -> list[str]:
    """train.py for one arm: the adapter options, the arm's pause tokens, and --config first if given."""
    argv = train_argv(args, data_dir, out, args.batch_size, args.gradient_accumulation_steps)
    argv += ["--pause_tokens", str(pause_tokens), "--pause_position", position, "--max_length", str(args.max_length)]
    return argv[:1] + (["--config", args.config] if args.config else []) + argv[1:]


def test_argv(args, data_dir: Path, out: Path) -> list[str]:
    argv = ["test.py", "--model_name_or_path", args.model, "--adapter_path", str(out), "--dataset_path", str(data_dir)]
    argv += ["--output_dir", str(out / "eval"), "--batch_size", str(args.eval_batch_size), "--max_new_tokens", "48"]
    argv += ["--overwrite"]
    return argv + (["--limit", str(args.test_questions)] if args.test_questions else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.hub_dataset and missing_data(DEV):
        return 1
    arms = [("no pauses", 0, "assistant")] + [
        (f"{args.pause_tokens} pauses, {position} turn", args.pause_tokens, position) for position in args.positions
    ]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        data_dir = work / "data"
        data_command = None
        if not (data_dir / "dataset_dict.json").exists():
            data_command = create_dataset_argv(data_dir, args.seed, args.hub_dataset)
            run_script(data_command)
        rows = []
        for name, count, position in arms:
            out = work / f"pause{count}-{position}"
            train_command = pause_train_argv(args, data_dir, out, count, position)
            train_s = run_script(train_command)
            test_command = test_argv(args, data_dir, out)
            test_s = run_script(test_command)
            metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
            state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
            losses = [e["loss"] for e in state["log_history"] if "loss" in e]
            rows.append(
                {
                    "arm": name,
                    "pause_tokens": count,
                    "pause_position": position if count else None,
                    "steps": state["global_step"],
                    "final_train_loss": losses[-1] if losses else None,
                    "train_seconds": round(train_s),
                    "test_seconds": round(test_s),
                    "metrics": {k: metrics.get(k) for k in METRICS},
                    "commands": [" ".join(train_command), " ".join(test_command)],
                }
            )

    print()
    print(
        f"model {args.model}; {args.train_questions or 'all'} training questions, "
        f"{args.max_steps if args.max_steps > 0 else f'{args.epochs:g} epoch(s)'}, batch {args.batch_size}"
        f"x{args.gradient_accumulation_steps}, "
        f"lr {args.learning_rate}, LoRA r={args.lora_r}, seed {args.seed}; "
        f"{args.test_questions or 'all'} test questions"
    )
    columns = [("arm", "<26"), ("steps", ">5"), ("loss", ">6.3f"), ("EM", ">6.1f"), ("F1", ">6.1f"),
               ("HasAns EM", ">9.1f"), ("HasAns F1", ">9.1f"), ("NoAns EM", ">8.1f"),
               ("valid JSON", ">10.1f")]  # fmt: skip
    print_table(columns, [
        [r["arm"], r["steps"], r["final_train_loss"],
         *(r["metrics"][k] for k in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "valid_json"))]
        for r in rows
    ])  # fmt: skip
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json_out:
        write_json(args.json_out, {"args": vars(args), "data_command": data_command, "arms": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
