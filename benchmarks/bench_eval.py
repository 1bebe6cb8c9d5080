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
    from llama_squad.evaluation import Answerer
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
    generator = Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens)))

    # 2. Batch-1, then ours.
    runs = batching_runs(generator, questions, baseline_questions, batch_size)

    # 3. Ratios and agreement of the greedy answers.
    figures = batching_figures(args, model, runs, max_new_tokens, [load_before, load_average()])
    print_batching_report(args, figures, runs, model, total, cuda)
    if args.json_out:
        write_json(args.json_out, figures)
    return 0


# ---------------------------------------------------------------------------------------------------- sharing


def load_turns(granularity: str, turns: int, sample: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(the questions of about ``turns`` user turns of the MultiWOZ 2.1 test split, as create_dataset.py builds them;
    the first question of every turn of the split, to compare prompt lengths with).

    ``sample``: ``first``, the first whole dialogues in file order (short, early histories: the slowest case for
    sharing); ``random``, whole dialogues drawn with ``seed`` until they hold ``turns`` turns, so that the turns have
    the split's mix of history lengths and the time per turn projects to the whole split without bias.
    """
    import random

    from datasets.utils.logging import disable_progress_bar

    from llama_squad.tasks.multiwoz import Arguments
    from llama_squad.tasks.multiwoz.dataset import build_split
    from llama_squad.tasks.multiwoz.prompts import make_questions
    from llama_squad.tasks.multiwoz.readers import read_dialogues
    from llama_squad.tasks.multiwoz.schema import default_slots

    disable_progress_bar()
    options = Arguments(task="multiwoz", output_dir="", test_file=str(MULTIWOZ21 / "test.json.zip"))
    questions = make_questions(default_slots(), granularity, options.list_categorical_values)
    dialogues = read_dialogues(MULTIWOZ21 / "test.json.zip")
    order = random.Random(seed).sample(dialogues, len(dialogues)) if sample == "random" else dialogues
    picked, held = [], 0
    for dialogue in order:
        if held >= turns:
            break
        picked.append(dialogue)
        held += len(dialogue.user_positions)
    rows, _ = build_split(picked, questions, system_prompt=options.system_prompt)
    rows = [dict(r) for r in rows]
    if sample == "first":  # exactly the first ``turns`` turns
        rows = rows[: turns * QUESTIONS_PER_TURN[granularity]]
    every_turn, _ = build_split(dialogues, questions[:1], system_prompt=options.system_prompt)
    return rows, [dict(r) for r in every_turn]


def prompt_lengths(tokenizer, questions: list[dict]) -> list[int]:
    from llama_squad.tokenization import tokenize_prompt

    return [len(tokenize_prompt(tokenizer, q["prompt"])) for q in questions]


def split_projection(runs: dict, per_turn: int, sample_first: list[int], split_first: list[int]) -> dict[str, float]:
    """Each path's seconds for the whole test split, from its chunks: seconds per question fitted as a line of the
    chunk's mean prompt length (least squares), summed over the split's turns at their own prompt lengths. A turn's
    mean prompt is its first question's plus the sample's mean difference between the two."""
    import numpy as np

    offset = runs["shared"]["mean_prompt_tokens"] - float(np.mean(sample_first))
    lengths = np.asarray(split_first, dtype=float) + offset
    seconds = {}
    for label, run in runs.items():
        x = [c["mean_prompt_tokens"] for c in run["chunks"]]
        y = [c["seconds"] / c["questions"] for c in run["chunks"]]
        slope, intercept = np.polyfit(x, y, 1)
        seconds[label] = per_turn * float(np.sum(intercept + slope * lengths))
    return seconds


def sharing_questions(args, cuda: bool) -> tuple[list[dict], int, int, int | None, str, list[dict] | None]:
    """(questions, batch size, max_new_tokens, user turns (MultiWOZ), what the questions are, for the report, and
    (MultiWOZ) the first question of every test turn)."""
    max_new_tokens = args.max_new_tokens or 24
    if args.task == "multiwoz":
        batch_size = args.batch_size or (QUESTIONS_PER_TURN[args.granularity] * (4 if cuda else 1))
        questions, every_turn = load_turns(args.granularity, args.turns, args.sample, args.seed)
        turns = len({(q["dialogue_id"], q["turn"]) for q in questions})
        dialogues = len({q["dialogue_id"] for q in questions})
        which = "the first" if args.sample == "first" else f"randomly drawn (seed {args.seed}) whole"
        what = (
            f"{len(questions):,} ({args.granularity} level) of {turns} test turns of MultiWOZ 2.1, in {dialogues} "
            f"{which} dialogues"
        )
        return questions, batch_size, max_new_tokens, turns, what, every_turn
    # the first questions of the dev-split test articles, in order (a paragraph's questions together)
    batch_size = args.batch_size or (64 if cuda else 16)
    questions, total = load_questions(args.limit or 64, None, args.prompt)
    what = f"the first {len(questions):,} of the {total:,} dev-split test questions, {args.prompt} prompts"
    return questions, batch_size, max_new_tokens, None, what, None


def sharing_runs(model, tokenizer, chunks: list[list[dict]], batch_size: int, max_new_tokens: int, cuda: bool) -> dict:
    """The unshared path and prefix sharing on the same questions, interleaved chunk by chunk (ABBA order: a busy
    machine slows both alike); each path's figures summed over the chunks, its peak memory the largest of a chunk."""
    import torch

    from llama_squad.evaluation import Answerer
    from llama_squad.generation import GenerationOptions, Generator

    labels = ("unshared", "shared")
    generators = {
        label: Answerer(
            Generator(model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens, share_prefix=share))
        )
        for label, share in zip(labels, (False, True), strict=True)
    }
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, chunk in enumerate(chunks):
            for label in labels if k % 2 == 0 else labels[::-1]:
                reset_peak_rss()
                run = timed_run(generators[label], chunk, batch_size, Path(tmp) / str(k), label, warm=k == 0)
                run["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
                run["chunks"] = [{key: run[key] for key in ("questions", "seconds", "mean_prompt_tokens")}]
                runs[label] = add_runs(runs[label], run) if label in runs else run
    return runs


def add_runs(total: dict, run: dict) -> dict:
    """Two timed runs of one path on different questions, as one."""
    questions = total["questions"] + run["questions"]
    seconds = total["seconds"] + run["seconds"]
    tokens = total["generated_tokens"] + run["generated_tokens"]
    return {
        "questions": questions,
        "batch_size": run["batch_size"],
        "seconds": seconds,
        "questions_per_s": questions / seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "mean_prompt_tokens": (
            total["mean_prompt_tokens"] * total["questions"] + run["mean_prompt_tokens"] * run["questions"]
        )
        / questions,
        "peak_memory_mib": max(total["peak_memory_mib"], run["peak_memory_mib"]),
        "outputs": {**total["outputs"], **run["outputs"]},
        "chunks": total["chunks"] + run["chunks"],
    }


def turn_chunks(questions: list[dict], turns_per_chunk: int) -> list[list[dict]]:
    """The questions in chunks of whole turns (MultiWOZ: same dialogue and turn), in order."""
    chunks, last, turns = [], None, 0
    for q in questions:
        turn = (q["dialogue_id"], q["turn"])
        if turn != last:
            if turns % turns_per_chunk == 0:
                chunks.append([])
            last, turns = turn, turns + 1
        chunks[-1].append(q)
    return chunks


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
    if "mean_prompt_tokens_split_first_question" in figures:
        print(f"  mean prompt of a turn's first question: {figures['mean_prompt_tokens_sample_first_question']:.0f} "
              f"tokens in this sample, {figures['mean_prompt_tokens_split_first_question']:.0f} over the "
              f"{TEST_TURNS_21:,} test turns (the projection above holds as far as these agree)")  # fmt: skip
    if "speedup_projected_test_split" in figures:
        hours = figures["projected_test_split_hours_fit"]
        print(f"  fitted to the split's prompt lengths (seconds per question as a line of the prompt length, per "
              f"chunk): {hours['unshared']:.1f} h unshared, {hours['shared']:.1f} h shared for the test split, "
              f"{figures['speedup_projected_test_split']:.2f}x")  # fmt: skip


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
    questions, batch_size, max_new_tokens, turns, what, every_turn = sharing_questions(args, cuda)
    model, tokenizer = load_model(args.model)
    if args.task == "multiwoz":
        chunks = turn_chunks(questions, args.chunk_turns)
    else:  # SQuAD: chunks of 4 batches, the same for both paths (a paragraph cut by a chunk's edge shares less)
        chunks = [questions[i : i + 4 * batch_size] for i in range(0, len(questions), 4 * batch_size)]
    runs = sharing_runs(model, tokenizer, chunks, batch_size, max_new_tokens, cuda)
    setting = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "chunks": len(chunks)}
    if every_turn is not None:
        setting["sample"] = args.sample
        setting["seed"] = args.seed
        setting["dialogues"] = len({q["dialogue_id"] for q in questions})
        first = questions[0]["id"].rsplit("/", 1)[1]  # ids: dialogue/turn/question
        sample_first = prompt_lengths(tokenizer, [q for q in questions if q["id"].rsplit("/", 1)[1] == first])
        split_first = prompt_lengths(tokenizer, every_turn)
        setting["mean_prompt_tokens_sample_first_question"] = sum(sample_first) / len(sample_first)
        setting["mean_prompt_tokens_split_first_question"] = sum(split_first) / len(split_first)
        if len(chunks) >= 3:
            fitted = split_projection(runs, QUESTIONS_PER_TURN[args.granularity], sample_first, split_first)
            setting["projected_test_split_hours_fit"] = {label: t / 3600 for label, t in fitted.items()}
            setting["speedup_projected_test_split"] = fitted["unshared"] / fitted["shared"]
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
