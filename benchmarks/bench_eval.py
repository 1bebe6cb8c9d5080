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

MultiWOZ (--task multiwoz): prefix sharing against the unshared path on the same user turns of the MultiWOZ 2.1 test
split (30 questions a turn at slot level, 5 at domain level; the answer format and the dialogue first, the question
last), same model, batch size and options, greedy, interleaved --chunk_turns turns at a time (ABBA order, so that a
busy machine slows both alike). The turns: whole dialogues drawn with --seed until they hold --turns turns
(--sample random, the default: the split's mix of short and long histories), or the first --turns turns (--sample
first: early, short histories, where sharing saves least). The speed-up grows with the prompt, so the report also
fits each path's seconds per question to the chunks' prompt lengths and sums that line over the prompt lengths of
all 7,372 test turns: the projected time of the split and its speed-up. --json_out gets {"speedup",
"identical_outputs", "turns", "questions", "speedup_projected_test_split", ...}:

    python benchmarks/bench_eval.py --task multiwoz --model embedded --turns 36 --batch_size 30 --max_new_tokens 12
    python benchmarks/bench_eval.py --task multiwoz --granularity domain --model embedded --turns 36 --batch_size 30 \
        --chunk_turns 6

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

Ours: ``llama_squad.evaluation.answer_examples`` with --batch_size, as test.py calls it: prompts tokenized and sorted
by length, left-padded batches, greedy decoding to --max_new_tokens, every answer scored, one durable (fsync'd)
append to results.csv per batch; timed end to end into a temporary folder.
Baseline: the same ``answer_examples`` call with batch_size=1, i.e. batch-1 generation, one question per ``generate``
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
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import DEV, MULTIWOZ21, missing_data
from common.data import QUESTIONS_PER_TURN, dtype_name, load_model, load_questions, load_turns
from common.machine import device_name, load_average, load_line, versions
from common.options import add_generation_options, add_run_options, benchmark_parser
from common.report import identical_outputs, print_table, ratio, without_outputs, write_json
from common.timing import interleaved_runs, timed_run, turn_chunks

GOAL = 20.0
TEST_TURNS_21 = 7372  # user turns of the MultiWOZ 2.1 test split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="tiny", help="tiny (random Llama), embedded (SmolLM2-135M), or a folder.")
    parser.add_argument("--limit", type=int, default=None, help="Questions (default: all on a GPU, 128 on a CPU).")
    parser.add_argument(
        "--baseline_limit", type=int, default=None, help="Questions for the batch-1 baseline (default: --limit)."
    )
    add_generation_options(
        parser,
        batch_size=None,
        max_new_tokens=None,
        batch_help="Ours (default: 64 on a GPU, 16 on a CPU).",
        tokens_help="Default: 24 for tiny, else test.py's default (64); 24 when prefixes are compared.",
    )
    add_run_options(parser, seed=0, seed_help="Shuffles the questions before --limit; MultiWOZ: draws the dialogues.")
    parser.add_argument("--task", choices=["squad_v2", "multiwoz"], default="squad_v2", help="See the docstring.")
    parser.add_argument("--granularity", choices=list(QUESTIONS_PER_TURN), default="slot", help="MultiWOZ questions.")
    parser.add_argument("--turns", type=int, default=10, help="MultiWOZ: about N user turns of the test split.")
    parser.add_argument(
        "--sample",
        choices=["random", "first"],
        default="random",
        help="MultiWOZ: whole dialogues drawn with --seed (the split's mix of history lengths), or the first ones.",
    )
    parser.add_argument(
        "--chunk_turns", type=int, default=2, help="MultiWOZ: turns per chunk of the interleaved timing."
    )
    parser.add_argument(
        "--prompt",
        choices=["single_turn", "multi_turn"],
        default="single_turn",
        help="SQuAD prompts; multi_turn compares prefix sharing (each turn from the previous turn's cache) instead.",
    )
    return parser.parse_args(argv)


@dataclass
class Plan:
    """What the two arms answer, and how."""

    arms: dict[str, str]  # run name: its label in the table, the baseline first
    questions: list[dict]
    batch_size: int
    max_new_tokens: int
    what: str  # the questions, for the report
    baseline_questions: list[dict] | None = None  # batching: the batch-1 arm's, the first of ``questions``
    chunks: list[list[dict]] | None = None  # sharing: the questions in chunks, for the interleaving
    every_turn: list[dict] | None = None  # MultiWOZ: the first question of every test turn


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sharing = args.task == "multiwoz" or args.prompt == "multi_turn"  # else: batching, against batch-1
    if missing_data(MULTIWOZ21 / "test.json.zip" if args.task == "multiwoz" else DEV):
        return 1
    from llama_squad.cli import setup_logging

    setup_logging(logging.WARNING)
    load = [load_average()]

    # 1. The questions, and the batch size and max_new_tokens of both arms; the model.
    plan = sharing_plan(args) if sharing else batching_plan(args)
    model, tokenizer = load_model(args.model)

    # 2. Time both arms on the same questions: batch-1, then ours; or unshared and shared, interleaved chunk by chunk.
    with tempfile.TemporaryDirectory() as tmp:
        if sharing:
            runs = sharing_runs(plan, model, tokenizer, Path(tmp))
        else:
            runs = batching_runs(plan, model, tokenizer, Path(tmp))
    load.append(load_average())

    # 3. The figures against the baseline arm, with the setting they were measured in.
    if sharing:
        figures = sharing_figures(args, plan, model, tokenizer, runs, load)
    else:
        figures = batching_figures(args, plan, model, runs, load)

    # 4. Print them; write them to --json_out.
    print_report(args, plan, model, figures, runs)
    if args.json_out:
        write_json(args.json_out, figures)
    return 0


# ---------------------------------------------------------------------------------------------------- batching


def batching_plan(args) -> Plan:
    """A shuffled sample of the dev-split test questions; the baseline answers the first --baseline_limit."""
    import torch

    from llama_squad.generation import GenerationOptions

    cuda = torch.cuda.is_available()
    questions, total = load_questions(args.limit or (None if cuda else 128), args.seed)
    baseline = questions[: args.baseline_limit or len(questions)]
    return Plan(
        arms={"baseline": "baseline (b=1)", "ours_subset": "ours (subset)", "ours": "ours"},
        questions=questions,
        batch_size=args.batch_size or (64 if cuda else 16),
        max_new_tokens=args.max_new_tokens or (24 if args.model == "tiny" else GenerationOptions.max_new_tokens),
        what=f"{len(questions):,} of the {total:,} dev-split test questions (seed {args.seed}); "
        f"baseline on the first {len(baseline):,}",
        baseline_questions=baseline,
    )


def batching_runs(plan: Plan, model, tokenizer, folder: Path) -> dict[str, dict]:
    """Batch-1 first (so the CPU's max RSS after it is its own), then ours on its questions (if fewer) and on all."""
    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator

    answerer = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=plan.max_new_tokens)))
    runs = {"baseline": timed_run(answerer, plan.baseline_questions, 1, folder, "baseline")}
    if len(plan.baseline_questions) < len(plan.questions):
        runs["ours_subset"] = timed_run(answerer, plan.baseline_questions, plan.batch_size, folder, "ours_subset")
    runs["ours"] = timed_run(answerer, plan.questions, plan.batch_size, folder, "ours")
    return runs


def batching_figures(args, plan: Plan, model, runs: dict, load: list[float]) -> dict:
    """The ratios and the agreement of the greedy answers, with the setting they were measured in."""
    base, ours = runs["baseline"], runs["ours"]
    return {
        "device": device_name(),
        **versions("torch", "transformers", "python"),
        "model": args.model,
        "parameters_m": round(model.num_parameters() / 1e6, 1),
        "dtype": dtype_name(model),
        "max_new_tokens": plan.max_new_tokens,
        "seed": args.seed,
        "load_average_1min": load,
        "speedup_same_questions": ratio(runs.get("ours_subset", ours), base, "questions_per_s"),
        "speedup_all_vs_baseline": ratio(ours, base, "questions_per_s"),
        "identical_outputs": identical_outputs(ours, base),
        "compared_outputs": len(base["outputs"]),
        **without_outputs(runs),
    }


def print_batching(figures: dict, runs: dict) -> None:
    import torch

    n_base, n_all = runs["baseline"]["questions"], runs["ours"]["questions"]
    print(f"  speed-up on the same {n_base:,} questions: {figures['speedup_same_questions']:.1f}x")
    if "ours_subset" in runs:
        print(f"  speed-up, ours on all {n_all:,} vs baseline on {n_base:,}: "
              f"{figures['speedup_all_vs_baseline']:.1f}x")  # fmt: skip
    print(f"  identical greedy answers (raw_output): {figures['identical_outputs']}/{figures['compared_outputs']}")
    if torch.cuda.is_available():
        verdict = "met" if figures["speedup_same_questions"] >= GOAL else "NOT met"
        print(f"  goal on a GPU: >= {GOAL:g}x questions/s: {verdict}")
    else:
        print(f"  (the >= {GOAL:g}x goal is for a GPU; on a CPU the ratio is for information)")


# ---------------------------------------------------------------------------------------------------- sharing


def sharing_plan(args) -> Plan:
    """MultiWOZ: about --turns test turns in chunks of --chunk_turns turns; SQuAD: the first --limit test questions
    in order (a paragraph's questions together), in chunks of 4 batches (a paragraph cut by a chunk's edge shares
    less)."""
    import torch

    cuda = torch.cuda.is_available()
    arms = {"unshared": "unshared", "shared": "shared prefix"}
    max_new_tokens = args.max_new_tokens or 24
    if args.task == "multiwoz":
        questions, every_turn = load_turns(args.granularity, args.turns, args.sample, args.seed)
        turns = len({(q["dialogue_id"], q["turn"]) for q in questions})
        dialogues = len({q["dialogue_id"] for q in questions})
        which = "the first" if args.sample == "first" else f"randomly drawn (seed {args.seed}) whole"
        what = (
            f"{len(questions):,} ({args.granularity} level) of {turns} test turns of MultiWOZ 2.1, in {dialogues} "
            f"{which} dialogues"
        )
        batch_size = args.batch_size or (QUESTIONS_PER_TURN[args.granularity] * (4 if cuda else 1))
        chunks = turn_chunks(questions, args.chunk_turns)
        return Plan(arms, questions, batch_size, max_new_tokens, what, chunks=chunks, every_turn=every_turn)
    batch_size = args.batch_size or (64 if cuda else 16)
    questions, total = load_questions(args.limit or 64, None, args.prompt)
    what = f"the first {len(questions):,} of the {total:,} dev-split test questions, {args.prompt} prompts"
    chunks = [questions[i : i + 4 * batch_size] for i in range(0, len(questions), 4 * batch_size)]
    return Plan(arms, questions, batch_size, max_new_tokens, what, chunks=chunks)


def sharing_runs(plan: Plan, model, tokenizer, folder: Path) -> dict[str, dict]:
    """The unshared path and prefix sharing on the same model and questions, interleaved chunk by chunk."""
    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator

    answerers = {
        label: Answerer(
            Generator(model, tokenizer, GenerationOptions(max_new_tokens=plan.max_new_tokens, share_prefix=share))
        )
        for label, share in (("unshared", False), ("shared", True))
    }
    return interleaved_runs(answerers, plan.chunks, plan.batch_size, folder)


def sharing_figures(args, plan: Plan, model, tokenizer, runs: dict, load: list[float]) -> dict:
    """The speed-up of sharing and the agreement of the greedy answers, with the setting they were measured in; for
    MultiWOZ, the time per turn and its projection to the whole test split."""
    unshared, shared = runs["unshared"], runs["shared"]
    same = identical_outputs(shared, unshared)
    turns = len({(q["dialogue_id"], q["turn"]) for q in plan.questions}) if args.task == "multiwoz" else None
    figures = {
        "task": args.task,
        "granularity": args.granularity if args.task == "multiwoz" else None,
        "prompt": args.prompt if args.task == "squad_v2" else None,
        "device": device_name(),
        **versions("torch", "transformers"),
        "model": args.model,
        "dtype": dtype_name(model),
        "max_new_tokens": plan.max_new_tokens,
        "batch_size": plan.batch_size,
        "chunks": len(plan.chunks),
        **(multiwoz_setting(args, plan, tokenizer, runs) if plan.every_turn is not None else {}),
        "turns": turns,
        "questions": unshared["questions"],
        "speedup": ratio(shared, unshared, "questions_per_s"),
        "identical_outputs": same == len(unshared["outputs"]),
        "identical_count": same,
        "load_average_1min": load,
        **without_outputs(runs),
    }
    if turns:
        for label, run in runs.items():
            figures[f"seconds_per_turn_{label}"] = run["seconds"] / turns
            figures[f"projected_test_split_hours_{label}"] = run["seconds"] / turns * TEST_TURNS_21 / 3600
    return figures


def multiwoz_setting(args, plan: Plan, tokenizer, runs: dict) -> dict:
    """The sample, the prompt lengths of a turn's first question in it and in the split, and (3 chunks or more) each
    path's seconds for the whole split: seconds per question fitted as a line of the chunk's mean prompt length
    (least squares), summed over the split's turns at their own prompt lengths (a turn's mean prompt: its first
    question's plus the sample's mean difference between the two)."""
    import numpy as np

    from llama_squad.tokenization import tokenize_prompt

    first = plan.questions[0]["id"].rsplit("/", 1)[1]  # ids: dialogue/turn/question
    sample_first = [q for q in plan.questions if q["id"].rsplit("/", 1)[1] == first]
    sample_first = [len(tokenize_prompt(tokenizer, q["prompt"])) for q in sample_first]
    split_first = [len(tokenize_prompt(tokenizer, q["prompt"])) for q in plan.every_turn]
    setting = {
        "sample": args.sample,
        "seed": args.seed,
        "dialogues": len({q["dialogue_id"] for q in plan.questions}),
        "mean_prompt_tokens_sample_first_question": float(np.mean(sample_first)),
        "mean_prompt_tokens_split_first_question": float(np.mean(split_first)),
    }
    if len(plan.chunks) >= 3:
        offset = runs["shared"]["mean_prompt_tokens"] - float(np.mean(sample_first))
        lengths = np.asarray(split_first, dtype=float) + offset
        seconds = {}
        for label, run in runs.items():
            x = [c["mean_prompt_tokens"] for c in run["chunks"]]
            y = [c["seconds"] / c["questions"] for c in run["chunks"]]
            slope, intercept = np.polyfit(x, y, 1)
            seconds[label] = QUESTIONS_PER_TURN[args.granularity] * float(np.sum(intercept + slope * lengths))
        setting["projected_test_split_hours_fit"] = {label: s / 3600 for label, s in seconds.items()}
        setting["speedup_projected_test_split"] = seconds["unshared"] / seconds["shared"]
    return setting


def print_sharing(figures: dict, runs: dict) -> None:
    print(f"  speed-up: {figures['speedup']:.2f}x questions/s; identical greedy answers: "
          f"{figures['identical_count']}/{len(runs['unshared']['outputs'])} rows")  # fmt: skip
    if figures["turns"]:
        print(f"  per turn: {figures['seconds_per_turn_unshared']:.2f} s unshared, "
              f"{figures['seconds_per_turn_shared']:.2f} s shared; the {TEST_TURNS_21:,} test turns: "
              f"{figures['projected_test_split_hours_unshared']:.1f} h unshared, "
              f"{figures['projected_test_split_hours_shared']:.1f} h shared on this machine")  # fmt: skip
    if "mean_prompt_tokens_split_first_question" in figures:
        print(f"  mean prompt of a turn's first question: {figures['mean_prompt_tokens_sample_first_question']:.0f} "
              f"tokens in this sample, {figures['mean_prompt_tokens_split_first_question']:.0f} over the "
              f"{TEST_TURNS_21:,} test turns (the projection above holds as far as these agree)")  # fmt: skip
    if "speedup_projected_test_split" in figures:
        hours = figures["projected_test_split_hours_fit"]
        print(f"  fitted to the split's prompt lengths (seconds per question as a line of the prompt length, per "
              f"chunk): {hours['unshared']:.1f} h unshared, {hours['shared']:.1f} h shared for the test split, "
              f"{figures['speedup_projected_test_split']:.2f}x")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report


def print_report(args, plan: Plan, model, figures: dict, runs: dict) -> None:
    """What was measured (device, versions, load, model, questions), the table of the arms, then the figures of the
    comparison."""
    import torch

    cuda = torch.cuda.is_available()
    shown = ("torch", "transformers", "python")
    print(f"device: {figures['device']} | " + ", ".join(f"{k} {figures[k]}" for k in shown if k in figures))
    print(load_line(*figures["load_average_1min"]))
    print(f"model: {args.model} ({model.num_parameters() / 1e6:.1f}M parameters, {figures['dtype']} on "
          f"{model.device}), greedy, max_new_tokens {plan.max_new_tokens}, batch {plan.batch_size}")  # fmt: skip
    print(f"questions: {plan.what}")
    memory = "peak MiB" if cuda else ("peak RSS MiB" if plan.chunks else "max RSS MiB")
    columns = [("", "<16"), ("questions", ">9,"), ("batch", ">5"), ("seconds", ">9.1f"), ("questions/s", ">11.2f"),
               ("gen tokens", ">10,"), ("tokens/s", ">9.0f"), ("mean prompt", ">11.0f"),
               (memory, ">9,.0f")]  # fmt: skip
    keys = ("questions", "batch_size", "seconds", "questions_per_s", "generated_tokens", "tokens_per_s",
            "mean_prompt_tokens", "peak_memory_mib")  # fmt: skip
    rows = [[label, *(runs[name][k] for k in keys)] for name, label in plan.arms.items() if name in runs]
    print_table(columns, rows, indent="  ", rule=False)
    if plan.chunks:
        print_sharing(figures, runs)
    else:
        print_batching(figures, runs)


if __name__ == "__main__":
    sys.exit(main())
