"""Calibrated abstention on the dev-split protocol, in one run: what ``--best_answers`` costs (questions/s with and
without it, on the same test questions), and the scores under a no-answer threshold chosen on the validation split,
beside the greedy ones and the oracle ceiling (the threshold that is best on the test questions themselves).

    # an adapter trained on the dev-split's training questions (e.g. train.py --max_train_examples 400)
    python benchmarks/bench_calibration.py --adapter output/smollm2-400 --questions 300 --batch_size 16
    # the zero-shot embedded model, constrained to spans of the context
    python benchmarks/bench_calibration.py --constrain extractive --questions 300 --batch_size 16

Steps: the validation split and the first --questions test questions (seeded shuffle, as bench_eval.py); the model
(and adapter) loaded once; the test questions answered greedily and greedily with best answers, interleaved chunk by
chunk (a busy machine slows both alike); the validation split answered with best answers and the threshold chosen
there by the official search (``llama_squad.evaluation.calibration``); the test rows scored greedy, calibrated and
under the oracle threshold. test.py's ``--calibrate_on validation --best_answers`` computes the same scores.
"""

import sys
import tempfile
import time
from pathlib import Path

from common import DEV, missing_data
from common.data import dev_split, load_questions
from common.machine import device_name, load_average, versions_line
from common.options import add_generation_options, add_run_options, benchmark_parser
from common.report import print_header, print_table, write_json
from common.timing import interleaved_runs

REPORTED = ("exact", "f1", "HasAns_exact", "NoAns_exact")


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="embedded", help="model_name_or_path")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter folder (default: none, the zero-shot model)")
    parser.add_argument("--questions", type=int, default=300, help="the first N test questions after the shuffle")
    parser.add_argument("--chunk_batches", type=int, default=2, help="batches per chunk of the interleaved arms")
    parser.add_argument("--constrain", default="none", choices=("none", "json", "extractive"))
    parser.add_argument("--force_answer", action="store_true", help='prefill {"answer": " for the model')
    add_generation_options(parser, batch_size=16, max_new_tokens=48)
    add_run_options(parser, seed=42, seed_help="the shuffle of the test questions")
    return parser.parse_args(argv)


def load_answerers(args) -> dict:
    """The model loaded once, answered with and without best answers (the engine's options are all it differs by)."""
    from dataclasses import replace

    from llama_squad.config import ModelLoadingArguments
    from llama_squad.evaluation import Answerer, load_answerer
    from llama_squad.generation import GenerationOptions, Generator

    options = GenerationOptions(max_new_tokens=args.max_new_tokens, constrain=args.constrain,
                                force_answer=args.force_answer)  # fmt: skip
    greedy = load_answerer(ModelLoadingArguments(args.model), options, adapter_path=args.adapter, seed=args.seed)
    engine = greedy.generator
    best = Answerer(Generator(engine.model, engine.tokenizer, replace(options, best_answers=True)), greedy.pause)
    return {"greedy": greedy, "best answers": best}


def read_rows(folder: Path, label: str):
    """Every chunk's rows of one arm, as one table."""
    import pandas as pd

    from llama_squad.results import read_results

    return pd.concat([read_results(p) for p in sorted(folder.glob(f"*/{label}/results.csv"))], ignore_index=True)


def scores(task, test_rows, validation_rows) -> tuple[list[dict], float, float]:
    """The test rows' scores greedy, under the threshold chosen on the validation rows, and under the oracle one."""
    from llama_squad.evaluation import calibration

    chosen = calibration.choose_thresholds(task, validation_rows)
    oracle = calibration.choose_thresholds(task, test_rows)
    greedy = task.summarize(test_rows)
    rows = [{"scores": "greedy", **{k: greedy[k] for k in REPORTED}}]
    for name, threshold in (("calibrated on validation", chosen), ("oracle (test split)", oracle)):
        metrics = task.summarize(calibration.apply_thresholds(task, test_rows, threshold))
        rows.append({"scores": name, "threshold": threshold, **{k: metrics[k] for k in REPORTED}})
    return rows, chosen, oracle


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing_data(DEV):
        return 1
    from llama_squad.evaluation import answer_examples
    from llama_squad.tasks import get_task

    start, load_before = time.perf_counter(), load_average()
    # 1. The test questions and the validation split; the model, loaded once, in two arms.
    questions, total = load_questions(args.questions, args.seed)
    validation = [dict(row) for row in dev_split()["validation"]]
    answerers = load_answerers(args)
    task = get_task("squad_v2")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # 2. The test questions by both arms, interleaved chunk by chunk: what best answers cost.
        chunk = args.batch_size * args.chunk_batches
        chunks = [questions[i : i + chunk] for i in range(0, len(questions), chunk)]
        runs = interleaved_runs(answerers, chunks, args.batch_size, folder / "test")
        # 3. The validation split with best answers; the threshold chosen there, applied to the test rows.
        answer_examples(answerers["best answers"], validation, folder / "validation" / "results.csv", args.batch_size)
        from llama_squad.results import read_results

        validation_rows = read_results(folder / "validation" / "results.csv")
        table, chosen, oracle = scores(task, read_rows(folder / "test", "best answers"), validation_rows)
    # 4. The figures.
    cost = runs["best answers"]["seconds"] / runs["greedy"]["seconds"] - 1
    report(args, runs, table, cost, [load_before, load_average()], len(questions), total, len(validation))
    print(f"wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.json_out:
        runs = {label: {k: v for k, v in run.items() if k != "outputs"} for label, run in runs.items()}
        thresholds = {"threshold_validation": chosen, "threshold_oracle": oracle}
        figures = {"cost_best_answers": cost, "runs": runs, "scores": table, **thresholds, "args": vars(args)}
        write_json(args.json_out, figures)
    return 0


def report(args, runs: dict, table: list[dict], cost: float, loads: list[float], n: int, total: int, validation: int):
    print(f"{device_name()}; {versions_line('torch', 'transformers')}; load {loads[0]:.1f} -> {loads[1]:.1f}")
    print(f"model {args.model}, adapter {args.adapter or 'none'}; --constrain {args.constrain}; {n} of the "
          f"{total:,} dev-split test questions; {validation} validation questions")  # fmt: skip
    print_header("cost of --best_answers (same questions, interleaved)")
    print_table(
        [("arm", "<16"), ("q/s", ">7.2f"), ("seconds", ">8.1f")],
        [[label, run["questions_per_s"], run["seconds"]] for label, run in runs.items()],
    )
    print(f"best answers cost {100 * cost:.1f}% of the greedy evaluation time")
    print_header("scores of the test questions (%)")
    rows = [
        [r["scores"], f"{r['threshold']:.4f}" if "threshold" in r else "-", *[r[k] for k in REPORTED]] for r in table
    ]
    print_table([("scores", "<26"), ("threshold", ">9"), *[(k, ">12.1f") for k in REPORTED]], rows)


if __name__ == "__main__":
    sys.exit(main())
