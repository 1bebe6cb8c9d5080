"""Constrained decoding (test.py --constrain) on the same dev-split test questions, in one run: the embedded model
zero-shot and with a short-trained adapter, each with none, json and extractive; valid JSON, EM/F1 with the
HasAns/NoAns split, questions/s and its ratio against `none` of the same model.

    # CPU: 300 questions; an adapter trained first on 200 dev-split training questions (one epoch, batches of 4 x 2
    # accumulated, as benchmarks/ab_pause_tokens.py trains its arms): about 20 min of training, 36 of generation
    python benchmarks/bench_constrained.py --questions 300 --json_out bench_constrained.json
    # with an adapter trained already (train.py's output_dir)
    python benchmarks/bench_constrained.py --adapter output/smollm2 --json_out bench_constrained.json
    # a quick check of the script
    python benchmarks/bench_constrained.py --questions 16 --train_questions 32 --max_steps 2

Questions: the dev-split protocol's test split (articles 25-34 of dev-v2.0.json), shuffled with --seed as
benchmarks/bench_eval.py shuffles it, the first --questions. Each setting is test.py's ``answer_examples`` with
``--constrain MODE`` (greedy, --max_new_tokens, --batch_size) after a warm-up; the model is loaded once per model
and only the mode changes. The modes are interleaved chunk by chunk (--chunk_batches batches of questions each), so
that a busy machine slows every mode alike: each mode's time is the sum of its chunks. The benchmark checks what
`extractive` promises: every output is one JSON object {"answer": "..."} whose answer is "?" or a substring of its
question's context; a violation fails the run.
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import DEV, missing_data
from common.data import load_questions
from common.machine import device_name, load_average
from common.options import add_adapter_options, add_generation_options, add_run_options, benchmark_parser
from common.report import print_table, ratio, write_json
from common.scripts import create_dataset_argv, run_script, train_argv
from common.timing import arm_order, warm_up

MODES = ("none", "json", "extractive")
THROUGHPUT_GOAL = 0.7  # constrained q/s at least this fraction of `none`'s
REPORTED = ("valid_json", "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "total")


def parse_args(argv=None):
    parser = benchmark_parser(__doc__)
    parser.add_argument("--adapter", default=None, help="a trained adapter folder; default: train one first")
    parser.add_argument("--questions", type=int, default=300, help="test questions answered by every setting")
    parser.add_argument("--chunk_batches", type=int, default=2, help="batches per chunk of the interleaving")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    add_generation_options(parser, batch_size=16, max_new_tokens=48)
    add_adapter_options(
        parser, "model_name_or_path (default: SmolLM2-135M-Instruct)", 200, "the adapter's training questions"
    )
    add_run_options(parser, seed=42)
    return parser.parse_args(argv)


def train_adapter(args, work: Path) -> tuple[Path, list[str]]:
    """Build the dev-split dataset and train a LoRA adapter on it with the real scripts; (its folder, commands)."""
    data, out = work / "data", work / "adapter"
    commands = [] if (data / "dataset_dict.json").exists() else [create_dataset_argv(data, args.seed)]
    commands.append(train_argv(args, data, out, batch_size=4, accumulation=2))
    for argv in commands:
        run_script(argv)
    return out, [" ".join(argv) for argv in commands]


def extractive_violations(questions: list[dict], outputs: dict[str, str]) -> list[str]:
    """The outputs that break `extractive`'s promise: not exactly one {"answer": string} object, or an answer that is
    neither "?" nor a substring of the question's context."""
    from llama_squad.answers import NO_ANSWER

    bad = []
    for q in questions:
        raw = outputs[str(q["id"])]
        try:
            answer = json.loads(raw)
            ok = isinstance(answer, dict) and list(answer) == ["answer"] and isinstance(answer["answer"], str)
            ok = ok and (answer["answer"] == NO_ANSWER or answer["answer"] in q["context"])
        except json.JSONDecodeError:
            ok = False
        if not ok:
            bad.append(f"{q['id']}: {raw!r}")
    return bad


def measure_model(label: str, answerer, questions: list[dict], args, folder: Path) -> list[dict]:
    """Every mode on one loaded model, interleaved: the questions go in chunks of --chunk_batches batches, each chunk
    answered by every mode in turn (the order rotating from chunk to chunk), so that a change of the machine's load
    hits every mode alike. A row of figures per mode."""
    from llama_squad.evaluation import answer_examples
    from llama_squad.results import read_results, summarize

    engine = answerer.generator
    base_options = engine.options
    warm_up(answerer, questions, args.batch_size)
    seconds = dict.fromkeys(args.modes, 0.0)
    chunk = args.batch_size * args.chunk_batches
    for k, end in enumerate(range(chunk, len(questions) + chunk, chunk)):
        for mode in arm_order(args.modes, k):
            engine.options = replace(base_options, constrain=mode)
            start = time.perf_counter()
            # resumable: each call answers the chunk's questions not yet in this mode's file
            answer_examples(
                answerer, questions[:end], folder / f"{label}-{mode}" / "results.csv", args.batch_size, False
            )
            seconds[mode] += time.perf_counter() - start
        print(f"{label}: {min(end, len(questions))}/{len(questions)} questions", file=sys.stderr, flush=True)
    engine.options = base_options
    rows = []
    for mode in args.modes:
        results = read_results(folder / f"{label}-{mode}" / "results.csv")
        if results["id"].nunique() != len(questions):
            raise RuntimeError(f"{label} {mode}: {results['id'].nunique()} of {len(questions)} questions answered")
        metrics = summarize(results)
        outputs = dict(zip(results["id"], results["raw_output"], strict=True))
        violations = extractive_violations(questions, outputs) if mode == "extractive" else []
        if violations:
            raise SystemExit(f"{label} extractive: {len(violations)} outputs break the constraint: {violations[:3]}")
        rows.append(
            {
                "model": label,
                "constrain": mode,
                **{k: metrics[k] for k in REPORTED},
                "q_per_s": len(questions) / seconds[mode],
                "seconds": seconds[mode],
                "generated_tokens": int(results["completion_tokens"].sum()),
                "extractive_violations": len(violations) if mode == "extractive" else None,
            }
        )
    by_mode = {r["constrain"]: r for r in rows}
    for r in rows:
        r["throughput_vs_none"] = ratio(r, by_mode["none"], "q_per_s") if "none" in by_mode else None
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if missing_data(DEV):
        return 1
    import transformers

    from llama_squad.config import ModelLoadingArguments
    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator
    from llama_squad.models import load_for_inference

    start = time.perf_counter()
    rows, train_commands = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        adapter = Path(args.adapter) if args.adapter else None
        if adapter is None:
            adapter, train_commands = train_adapter(args, work)
        questions, split_size = load_questions(args.questions, args.seed)
        options = GenerationOptions(max_new_tokens=args.max_new_tokens)
        for label, adapter_path in (("zero-shot", None), ("adapter", adapter)):
            model, tokenizer = load_for_inference(ModelLoadingArguments(args.model), adapter_path=adapter_path)
            transformers.set_seed(args.seed)
            answerer = Answerer(Generator(model, tokenizer, options))
            rows += measure_model(label, answerer, questions, args, work / "results")
            del model, answerer

    print()
    print(
        f"{device_name()}; load average {load_average():.1f}; model {args.model}; {len(questions)} of the "
        f"{split_size:,} dev-split test questions; batch {args.batch_size}, greedy, max_new_tokens "
        f"{args.max_new_tokens}; adapter {args.adapter or f'trained on {args.train_questions} questions'}"
    )
    columns = [("model", "<10"), ("constrain", "<10"), ("valid JSON", ">10.1f"), ("EM", ">6.1f"), ("F1", ">6.1f"),
               ("HasAns EM", ">9.1f"), ("NoAns EM", ">8.1f"), ("q/s", ">6.2f"), ("vs none", ">7")]  # fmt: skip
    print_table(columns, [
        [r["model"], r["constrain"], r["valid_json"], r["exact"], r["f1"], r["HasAns_exact"], r["NoAns_exact"],
         r["q_per_s"], "n/a" if r["throughput_vs_none"] is None else f"{r['throughput_vs_none']:.2f}x"]
        for r in rows
    ])  # fmt: skip
    slow = [r for r in rows if r["throughput_vs_none"] is not None and r["throughput_vs_none"] < THROUGHPUT_GOAL]
    print(f"throughput goal >= {THROUGHPUT_GOAL}x of none: {'missed by ' + str(len(slow)) if slow else 'met'}")
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json_out:
        payload = {
            "args": vars(args),
            "device": device_name(),
            "questions": len(questions),
            "train_commands": train_commands,
            "settings": rows,
        }
        write_json(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
