"""How many SQuAD questions per second test.py's batched generation answers, against batch-1 generation, on the same
questions in one run (goal on a GPU: >= 20x with SmolLM2-135M-Instruct on the 3,856 dev-split test questions).

    # CPU: a tiny random Llama with the real SmolLM2 tokenizer, 128 of the questions (3-6 min on 2 busy cores)
    python benchmarks/bench_eval.py --model tiny --limit 128 --batch_size 16
    # CPU: the real SmolLM2-135M-Instruct on a small sample (13 min on 2 busy cores)
    python benchmarks/bench_eval.py --model embedded --limit 32 --batch_size 16
    # GPU (bfloat16): ours on all 3,856 questions; the batch-1 baseline on 300 of them (fits one 10-minute command);
    # on the lent GPU machine, install what it lacks first as ../shared/gpu/README.md says
    python benchmarks/bench_eval.py --model embedded --limit 3856 --batch_size 64 --baseline_limit 300 \
        --json_out bench_eval.json

MultiWOZ (--task multiwoz): prefix sharing against the unshared path, on the same first --turns user turns of the
MultiWOZ 2.1 test split (30 questions a turn at slot level, 5 at domain level; the answer format and the dialogue
first, the question last), same model, batch size and options, greedy; --json_out gets {"speedup",
"identical_outputs", "turns", "questions", ...}:

    python benchmarks/bench_eval.py --task multiwoz --model embedded --turns 20 --batch_size 30 --max_new_tokens 12
    python benchmarks/bench_eval.py --task multiwoz --granularity domain --model embedded --turns 20 --batch_size 32

Multi-turn SQuAD prompts (--prompt multi_turn: is there an answer? the span? as JSON?) the same way, on the first
--limit test questions in order: shared, each turn starts from the cache of the previous one (and a paragraph's
questions share its context); unshared, each turn reads the whole conversation again:

    python benchmarks/bench_eval.py --prompt multi_turn --model embedded --limit 64 --batch_size 16

Unshared: every question's whole prompt goes through the model (test.py with --share_prefix false). Shared (test.py's
default): the questions of one turn are batched together, their common prefix (system prompt and dialogue) runs
once, and its keys and values are repeated for each question, whose own tokens (the slot question) follow. Peak
memory is measured per run: CUDA's allocator peak, or the process's peak RSS (VmHWM, reset before the run) on a CPU.

Questions: the test split of the dev-split protocol (dev-v2.0.json, articles 25-34: 3,856 questions), built in process
as create_dataset.py builds it, shuffled with --seed so that a --limit subset has the split's mix of prompt lengths.
The baseline's questions are the first --baseline_limit of ours.

Ours: ``llama_squad.generation.run_generation`` with --batch_size, as test.py calls it: prompts tokenized and sorted by
length, left-padded batches, greedy decoding to --max_new_tokens, every answer scored, one durable (fsync'd) append to
results.csv per batch; timed end to end into a temporary folder.
Baseline: the same ``run_generation`` call with batch_size=1, i.e. batch-1 generation, one question per ``generate``
call without padding, the way the original llama-squad answered; same model, Generator, options and process (so it
also pays test.py's scoring and one results.csv append per question).

When the baseline runs on fewer questions than ours, ours is timed twice: on the baseline's questions (the
like-for-like ratio) and on all of them (the ratio test.py users see). Each timed run follows a warm-up ``generate``
of the same batch size. Also printed: generated tokens and tokens/s, mean prompt length, peak memory (CUDA: allocated
during that run; CPU: the process's max RSS so far, and the baseline runs first), and how many greedy answers
(raw_output) are identical in the two runs: all of them in float32 on a CPU; in bfloat16 a few may differ.
On a CPU batching gains less than on a GPU (two cores have little idle arithmetic for a batch to fill) and other
processes skew the timings (hence the load average printed): the CPU ratios show that the harness works; the goal is
about the GPU ratio.
"""

import argparse
import platform
import sys
import tempfile
from pathlib import Path

from common import (
    DEV,
    MULTIWOZ21,
    device_name,
    load_average,
    load_line,
    load_model,
    load_questions,
    missing_data,
    proc_status_kib,
    reset_peak_rss,
    timed_run,
    write_json,
)

GOAL = 20.0
QUESTIONS_PER_TURN = {"slot": 30, "domain": 5}
TEST_TURNS_21 = 7372  # user turns of the MultiWOZ 2.1 test split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (random Llama), embedded (SmolLM2-135M), or a folder.")
    parser.add_argument("--limit", type=int, default=None, help="Questions (default: all on a GPU, 128 on a CPU).")
    parser.add_argument(
        "--baseline_limit", type=int, default=None, help="Questions for the batch-1 baseline (default: --limit)."
    )
    parser.add_argument("--batch_size", type=int, default=None, help="Ours (default: 64 on a GPU, 16 on a CPU).")
    parser.add_argument(
        "--max_new_tokens", type=int, default=None, help="Default: 24 for tiny, else test.py's default (64)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Shuffles the questions before --limit.")
    parser.add_argument("--json_out", default=None, help="Also write the figures to this JSON file.")
    parser.add_argument("--task", choices=["squad_v2", "multiwoz"], default="squad_v2", help="See the docstring.")
    parser.add_argument("--granularity", choices=list(QUESTIONS_PER_TURN), default="slot", help="MultiWOZ questions.")
    parser.add_argument("--turns", type=int, default=10, help="MultiWOZ: the first N user turns of the test split.")
    parser.add_argument(
        "--prompt",
        choices=["single_turn", "multi_turn"],
        default="single_turn",
        help="SQuAD prompts; multi_turn compares prefix sharing (each turn from the previous turn's cache) instead.",
    )
    return parser.parse_args(argv)


def row(label: str, run: dict) -> str:
    return (
        f"  {label:<16} {run['questions']:>9,} {run['batch_size']:>5} {run['seconds']:>9.1f} "
        f"{run['questions_per_s']:>11.2f} {run['generated_tokens']:>10,} {run['tokens_per_s']:>9.0f} "
        f"{run['mean_prompt_tokens']:>11.0f} {run['peak_memory_mib']:>9,.0f}"
    )


def print_table_header(memory: str) -> None:
    print(f"  {'':<16} {'questions':>9} {'batch':>5} {'seconds':>9} {'questions/s':>11} {'gen tokens':>10} "
          f"{'tokens/s':>9} {'mean prompt':>11} {memory:>9}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- batching


def batching_runs(generator, questions: list[dict], baseline_questions: list[dict], batch_size: int) -> dict:
    """Batch-1 first (so the CPU's max RSS after it is its own), then ours on its questions and on all."""
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"baseline": timed_run(generator, baseline_questions, 1, Path(tmp), "baseline")}
        if len(baseline_questions) < len(questions):
            runs["ours_subset"] = timed_run(generator, baseline_questions, batch_size, Path(tmp), "ours_subset")
        runs["ours"] = timed_run(generator, questions, batch_size, Path(tmp), "ours")
    return runs


def batching_figures(args, model, runs: dict, max_new_tokens: int, load: list[float]) -> dict:
    """The ratios and the agreement of the greedy answers, with the setting they were measured in."""
    import torch
    import transformers

    base, ours = runs["baseline"], runs["ours"]
    like_for_like = runs.get("ours_subset", ours)
    same = sum(ours["outputs"][qid] == text for qid, text in base["outputs"].items())
    return {
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "parameters_m": round(model.num_parameters() / 1e6, 1),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "max_new_tokens": max_new_tokens,
        "seed": args.seed,
        "load_average_1min": load,
        "speedup_same_questions": like_for_like["questions_per_s"] / base["questions_per_s"],
        "speedup_all_vs_baseline": ours["questions_per_s"] / base["questions_per_s"],
        "identical_outputs": same,
        "compared_outputs": len(base["outputs"]),
        **{name: {k: v for k, v in run.items() if k != "outputs"} for name, run in runs.items()},
    }


def print_batching_report(args, figures: dict, runs: dict, model, total: int, cuda: bool) -> None:
    import torch
    import transformers

    base, ours = runs["baseline"], runs["ours"]
    n_base, n_all = base["questions"], ours["questions"]
    params, dtype = model.num_parameters() / 1e6, figures["dtype"]
    print(f"device: {figures['device']} | torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {figures['python']}")  # fmt: skip
    print(load_line(*figures["load_average_1min"]))
    print(f"model: {args.model} ({params:.1f}M parameters, {dtype} on {model.device}), greedy, "
          f"max_new_tokens {figures['max_new_tokens']}")  # fmt: skip
    print(f"questions: {n_all:,} of the {total:,} dev-split test questions (seed {args.seed}); "
          f"baseline on the first {n_base:,}")  # fmt: skip
    print_table_header("peak MiB" if cuda else "max RSS MiB")
    print(row("baseline (b=1)", base))
    if "ours_subset" in runs:
        print(row("ours (subset)", runs["ours_subset"]))
    print(row("ours", ours))
    print(f"  speed-up on the same {n_base:,} questions: {figures['speedup_same_questions']:.1f}x")
    if "ours_subset" in runs:
        print(f"  speed-up, ours on all {n_all:,} vs baseline on {n_base:,}: "
              f"{figures['speedup_all_vs_baseline']:.1f}x")  # fmt: skip
    print(f"  identical greedy answers (raw_output): {figures['identical_outputs']}/{len(base['outputs'])}")
    if cuda:
        verdict = "met" if figures["speedup_same_questions"] >= GOAL else "NOT met"
        print(f"  goal on a GPU: >= {GOAL:g}x questions/s: {verdict}")
    else:
        print(f"  (the >= {GOAL:g}x goal is for a GPU; on a CPU the ratio is for information)")


def batching_main(args) -> int:
    """test.py's batched generation against batch-1 generation on the same SQuAD questions."""
    if missing_data(DEV):
        return 1
    import logging

    import torch

    from llama_squad.cli import setup_logging
    from llama_squad.generation import GenerationOptions, Generator

    setup_logging(logging.WARNING)
    cuda = torch.cuda.is_available()
    limit = args.limit or (None if cuda else 128)
    batch_size = args.batch_size or (64 if cuda else 16)
    max_new_tokens = args.max_new_tokens or (24 if args.model == "tiny" else GenerationOptions.max_new_tokens)
    load_before = load_average()

    # 1. The questions and the model.
    questions, total = load_questions(limit, args.seed)
    baseline_questions = questions[: args.baseline_limit or len(questions)]
    model, tokenizer = load_model(args.model)
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens))

    # 2. Batch-1, then ours.
    runs = batching_runs(generator, questions, baseline_questions, batch_size)

    # 3. Ratios and agreement of the greedy answers.
    figures = batching_figures(args, model, runs, max_new_tokens, [load_before, load_average()])
    print_batching_report(args, figures, runs, model, total, cuda)
    if args.json_out:
        write_json(args.json_out, figures)
    return 0


# ---------------------------------------------------------------------------------------------------- sharing


def load_turns(granularity: str, turns: int) -> list[dict]:
    """The questions of the first ``turns`` user turns of the MultiWOZ 2.1 test split, as create_dataset.py builds."""
    from datasets.utils.logging import disable_progress_bar

    from llama_squad.tasks.multiwoz import Arguments, build_dataset

    disable_progress_bar()
    per_turn = QUESTIONS_PER_TURN[granularity]
    dialogues = max(2, turns // 6 + 2)  # ~7 user turns a dialogue: enough dialogues for the turns asked
    options = Arguments(
        task="multiwoz", output_dir="", train_file=str(MULTIWOZ21 / "val.json.zip"),
        test_file=str(MULTIWOZ21 / "test.json.zip"), granularity=granularity, max_dialogues_per_split=dialogues,
    )  # fmt: skip
    test = build_dataset(options)["test"]
    return [dict(row) for row in test.select(range(min(len(test), turns * per_turn)))]


def sharing_questions(args, cuda: bool) -> tuple[list[dict], int, int, int | None, str]:
    """(questions, batch size, max_new_tokens, user turns (MultiWOZ), what the questions are, for the report)."""
    max_new_tokens = args.max_new_tokens or 24
    if args.task == "multiwoz":
        batch_size = args.batch_size or (QUESTIONS_PER_TURN[args.granularity] * (4 if cuda else 1))
        questions = load_turns(args.granularity, args.turns)
        turns = len({(q["dialogue_id"], q["turn"]) for q in questions})
        what = f"{len(questions):,} ({args.granularity} level) of the first {turns} test turns of MultiWOZ 2.1"
        return questions, batch_size, max_new_tokens, turns, what
    # the first questions of the dev-split test articles, in order (a paragraph's questions together)
    batch_size = args.batch_size or (64 if cuda else 16)
    questions, total = load_questions(args.limit or 64, None, args.prompt)
    what = f"the first {len(questions):,} of the {total:,} dev-split test questions, {args.prompt} prompts"
    return questions, batch_size, max_new_tokens, None, what


def sharing_runs(model, tokenizer, questions: list[dict], batch_size: int, max_new_tokens: int, cuda: bool) -> dict:
    """The unshared path, then prefix sharing, on the same questions; peak memory of each run."""
    import torch

    from llama_squad.generation import GenerationOptions, Generator

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, share in (("unshared", False), ("shared", True)):
            generator = Generator(
                model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens, share_prefix=share)
            )
            reset_peak_rss()
            run = timed_run(generator, questions, batch_size, Path(tmp), label)
            run["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
            runs[label] = run
    return runs


def peak_rss_mib() -> float:
    kib = proc_status_kib("VmHWM")
    return kib / 1024 if kib is not None else float("nan")


def sharing_figures(args, model, runs: dict, setting: dict, turns: int | None, load: list[float]) -> dict:
    """The speed-up of sharing and the agreement of the greedy answers, with the setting they were measured in."""
    import torch
    import transformers

    unshared, shared = runs["unshared"], runs["shared"]
    same = sum(shared["outputs"][qid] == text for qid, text in unshared["outputs"].items())
    figures = {
        "task": args.task,
        "granularity": args.granularity if args.task == "multiwoz" else None,
        "prompt": args.prompt if args.task == "squad_v2" else None,
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **setting,
        "turns": turns,
        "questions": unshared["questions"],
        "speedup": shared["questions_per_s"] / unshared["questions_per_s"],
        "identical_outputs": same == len(unshared["outputs"]),
        "identical_count": same,
        "load_average_1min": load,
        **{name: {k: v for k, v in run.items() if k != "outputs"} for name, run in runs.items()},
    }
    if turns:
        figures["seconds_per_turn_shared"] = shared["seconds"] / turns
        figures["seconds_per_turn_unshared"] = unshared["seconds"] / turns
        figures["projected_test_split_hours_shared"] = shared["seconds"] / turns * TEST_TURNS_21 / 3600
        figures["projected_test_split_hours_unshared"] = unshared["seconds"] / turns * TEST_TURNS_21 / 3600
    return figures


def print_sharing_report(args, figures: dict, runs: dict, what: str, cuda: bool) -> None:
    import torch
    import transformers

    unshared, shared = runs["unshared"], runs["shared"]
    print(f"device: {figures['device']} | torch {torch.__version__}, transformers {transformers.__version__}")
    print(load_line(*figures["load_average_1min"]))
    print(f"model: {args.model} ({figures['dtype']}), greedy, max_new_tokens {figures['max_new_tokens']}, "
          f"batch {figures['batch_size']}")  # fmt: skip
    print(f"questions: {what}")
    print_table_header("peak MiB" if cuda else "peak RSS MiB")
    print(row("unshared", unshared))
    print(row("shared prefix", shared))
    print(f"  speed-up: {figures['speedup']:.2f}x questions/s; identical greedy answers: "
          f"{figures['identical_count']}/{len(unshared['outputs'])} rows")  # fmt: skip
    if figures["turns"]:
        print(f"  per turn: {figures['seconds_per_turn_unshared']:.2f} s unshared, "
              f"{figures['seconds_per_turn_shared']:.2f} s shared; the {TEST_TURNS_21:,} test turns: "
              f"{figures['projected_test_split_hours_unshared']:.1f} h unshared, "
              f"{figures['projected_test_split_hours_shared']:.1f} h shared on this machine")  # fmt: skip


def sharing_main(args) -> int:
    """Prefix sharing against the unshared path on the same questions: MultiWOZ turns, or multi-turn SQuAD prompts."""
    if missing_data(MULTIWOZ21 / "test.json.zip" if args.task == "multiwoz" else DEV):
        return 1
    import logging

    import torch

    from llama_squad.cli import setup_logging

    setup_logging(logging.WARNING)
    cuda = torch.cuda.is_available()
    load_before = load_average()
    questions, batch_size, max_new_tokens, turns, what = sharing_questions(args, cuda)
    model, tokenizer = load_model(args.model)
    runs = sharing_runs(model, tokenizer, questions, batch_size, max_new_tokens, cuda)
    setting = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    figures = sharing_figures(args, model, runs, setting, turns, [load_before, load_average()])
    print_sharing_report(args, figures, runs, what, cuda)
    if args.json_out:
        write_json(args.json_out, figures)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.task == "multiwoz" or args.prompt == "multi_turn":
        return sharing_main(args)
    return batching_main(args)


if __name__ == "__main__":
    sys.exit(main())
