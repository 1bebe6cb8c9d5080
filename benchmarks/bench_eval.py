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
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV = REPO.parent / "shared" / "data" / "squad_v2" / "dev-v2.0.json"
SMOLLM2 = REPO.parent / "shared" / "tokenizers" / "smollm2-135m-instruct"
TEST_ARTICLES = "25:35"
GOAL = 20.0


# ---------------------------------------------------------------------------------------------------- setup


def load_questions(limit: int | None, seed: int | None, prompt: str = "single_turn") -> tuple[list[dict], int]:
    """(the first ``limit`` dev-split test questions after a seeded shuffle, or in the split's order when ``seed`` is
    None; how many the split holds)."""
    from datasets.utils.logging import disable_progress_bar

    from llama_squad.tasks.squad_v2 import Arguments, build_dataset

    disable_progress_bar()
    options = Arguments(
        task="squad_v2", output_dir="", train_file=str(DEV), test_articles=TEST_ARTICLES, prompt=prompt
    )
    dataset = build_dataset(options)
    questions = [dict(row) for row in dataset["test"]]
    if seed is not None:
        random.Random(seed).shuffle(questions)
    return questions[:limit], len(questions)


def tiny_model(device: str):
    """A random 4-layer Llama (hidden 256) with the real SmolLM2 tokenizer; weights large enough to vary answers."""
    from llama_squad.models import load_tokenizer, random_llama, resolve_dtype

    tokenizer = load_tokenizer(SMOLLM2, padding_side="left")
    model = random_llama(
        tokenizer,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.3,
    )
    return model.to(device=device, dtype=resolve_dtype("auto")).eval(), tokenizer


def load_model(name: str):
    import torch

    if name == "tiny":
        return tiny_model("cuda" if torch.cuda.is_available() else "cpu")
    from llama_squad.models import load_for_inference

    return load_for_inference(name)  # the GPU and bfloat16 when there is one, float32 on the CPU


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------------------------------------------- timing


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed_run(generator, questions: list[dict], batch_size: int, folder: Path, label: str) -> dict:
    """Warm up, then time ``run_generation`` end to end; its figures and raw outputs by id."""
    import torch

    from llama_squad.generation import GenerationOptions, Generator, run_generation
    from llama_squad.results import read_results

    warm = Generator(generator.model, generator.tokenizer, GenerationOptions(max_new_tokens=2))
    prompt = warm.prompt_ids(questions[0]["prompt"], last_turn=True)[0]
    warm.generate([prompt] * min(batch_size, len(questions)))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    output_csv = folder / label / "results.csv"
    start = time.perf_counter()
    answered, _ = run_generation(generator, questions, output_csv, batch_size, progress=sys.stderr.isatty())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    results = read_results(output_csv)
    written = results["example_id"].nunique()  # a MultiWOZ domain question has a row per slot
    if answered != len(questions) or written != len(questions):
        raise RuntimeError(f"{label}: answered {answered} and wrote {written} of {len(questions)} questions")
    tokens = int(results["completion_tokens"].sum())
    return {
        "questions": answered,
        "batch_size": batch_size,
        "seconds": seconds,
        "questions_per_s": answered / seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "mean_prompt_tokens": float(results["prompt_tokens"].mean()),
        "peak_memory_mib": peak_memory_mib(),
        "outputs": dict(zip(results["id"], results["raw_output"], strict=True)),
    }


def row(label: str, run: dict) -> str:
    return (
        f"  {label:<16} {run['questions']:>9,} {run['batch_size']:>5} {run['seconds']:>9.1f} "
        f"{run['questions_per_s']:>11.2f} {run['generated_tokens']:>10,} {run['tokens_per_s']:>9.0f} "
        f"{run['mean_prompt_tokens']:>11.0f} {run['peak_memory_mib']:>9,.0f}"
    )


# ---------------------------------------------------------------------------------------------------- multiwoz

MULTIWOZ = REPO.parent / "shared" / "data" / "multiwoz21"
QUESTIONS_PER_TURN = {"slot": 30, "domain": 5}
TEST_TURNS_21 = 7372  # user turns of the MultiWOZ 2.1 test split


def reset_peak_rss() -> None:
    """Start a new peak for VmHWM (Linux: writing 5 to clear_refs resets it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_turns(granularity: str, turns: int) -> list[dict]:
    """The questions of the first ``turns`` user turns of the MultiWOZ 2.1 test split, as create_dataset.py builds."""
    from datasets.utils.logging import disable_progress_bar

    from llama_squad.tasks.multiwoz import Arguments, build_dataset

    disable_progress_bar()
    per_turn = QUESTIONS_PER_TURN[granularity]
    dialogues = max(2, turns // 6 + 2)  # ~7 user turns a dialogue: enough dialogues for the turns asked
    options = Arguments(
        task="multiwoz", output_dir="", train_file=str(MULTIWOZ / "val.json.zip"),
        test_file=str(MULTIWOZ / "test.json.zip"), granularity=granularity, max_dialogues_per_split=dialogues,
    )  # fmt: skip
    test = build_dataset(options)["test"]
    return [dict(row) for row in test.select(range(min(len(test), turns * per_turn)))]


def sharing_main(args) -> int:
    """Prefix sharing against the unshared path on the same questions: MultiWOZ turns, or multi-turn SQuAD prompts."""
    import logging

    import torch
    import transformers

    from llama_squad.cli import setup_logging
    from llama_squad.generation import GenerationOptions, Generator

    needed = MULTIWOZ / "test.json.zip" if args.task == "multiwoz" else DEV
    if not needed.exists():
        print(f"{needed} not found: this benchmark needs ../shared/data beside the checkout", file=sys.stderr)
        return 1
    setup_logging(logging.WARNING)
    cuda = torch.cuda.is_available()
    load_before = os.getloadavg()[0]
    if args.task == "multiwoz":
        batch_size = args.batch_size or (QUESTIONS_PER_TURN[args.granularity] * (4 if cuda else 1))
        max_new_tokens = args.max_new_tokens or 24
        questions = load_turns(args.granularity, args.turns)
        turns = len({(q["dialogue_id"], q["turn"]) for q in questions})
        what = f"{len(questions):,} ({args.granularity} level) of the first {turns} test turns of MultiWOZ 2.1"
    else:  # the first questions of the dev-split test articles, in order (a paragraph's questions together)
        batch_size = args.batch_size or (64 if cuda else 16)
        max_new_tokens = args.max_new_tokens or 24
        questions, total = load_questions(args.limit or 64, None, args.prompt)
        turns = None
        what = f"the first {len(questions):,} of the {total:,} dev-split test questions, {args.prompt} prompts"
    model, tokenizer = load_model(args.model)
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
    load_after = os.getloadavg()[0]
    unshared, shared = runs["unshared"], runs["shared"]
    same = sum(shared["outputs"][qid] == text for qid, text in unshared["outputs"].items())
    speedup = shared["questions_per_s"] / unshared["questions_per_s"]
    figures = {
        "task": args.task,
        "granularity": args.granularity if args.task == "multiwoz" else None,
        "prompt": args.prompt if args.task == "squad_v2" else None,
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "turns": turns,
        "questions": len(questions),
        "speedup": speedup,
        "identical_outputs": same == len(unshared["outputs"]),
        "identical_count": same,
        "load_average_1min": [load_before, load_after],
        **{name: {k: v for k, v in run.items() if k != "outputs"} for name, run in runs.items()},
    }
    if turns:
        figures["seconds_per_turn_shared"] = shared["seconds"] / turns
        figures["seconds_per_turn_unshared"] = unshared["seconds"] / turns
        figures["projected_test_split_hours_shared"] = shared["seconds"] / turns * TEST_TURNS_21 / 3600
        figures["projected_test_split_hours_unshared"] = unshared["seconds"] / turns * TEST_TURNS_21 / 3600
    print(f"device: {figures['device']} | torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"1-min load average: {load_before:.1f} at the start, {load_after:.1f} at the end ({os.cpu_count()} cores)")
    print(f"model: {args.model} ({figures['dtype']}), greedy, max_new_tokens {max_new_tokens}, batch {batch_size}")
    print(f"questions: {what}")
    memory = "peak MiB" if cuda else "peak RSS MiB"
    print(f"  {'':<16} {'questions':>9} {'batch':>5} {'seconds':>9} {'questions/s':>11} {'gen tokens':>10} "
          f"{'tokens/s':>9} {'mean prompt':>11} {memory:>9}")  # fmt: skip
    print(row("unshared", unshared))
    print(row("shared prefix", shared))
    print(f"  speed-up: {speedup:.2f}x questions/s; identical greedy answers: {same}/{len(unshared['outputs'])} rows")
    if turns:
        print(f"  per turn: {figures['seconds_per_turn_unshared']:.2f} s unshared, "
              f"{figures['seconds_per_turn_shared']:.2f} s shared; the {TEST_TURNS_21:,} test turns: "
              f"{figures['projected_test_split_hours_unshared']:.1f} h unshared, "
              f"{figures['projected_test_split_hours_shared']:.1f} h shared on this machine")  # fmt: skip
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    if args.task == "multiwoz" or args.prompt == "multi_turn":
        return sharing_main(args)
    if not DEV.exists():
        print(f"{DEV} not found: this benchmark needs ../shared/data beside the checkout", file=sys.stderr)
        return 1

    import logging

    import torch
    import transformers

    from llama_squad.cli import setup_logging
    from llama_squad.generation import GenerationOptions, Generator

    setup_logging(logging.WARNING)
    cuda = torch.cuda.is_available()
    limit = args.limit or (None if cuda else 128)
    batch_size = args.batch_size or (64 if cuda else 16)
    max_new_tokens = args.max_new_tokens or (24 if args.model == "tiny" else GenerationOptions.max_new_tokens)

    load_before = os.getloadavg()[0]  # other processes on the machine skew CPU timings: say how busy it was

    # 1. The questions and the model.
    questions, total = load_questions(limit, args.seed)
    baseline_questions = questions[: args.baseline_limit or len(questions)]
    model, tokenizer = load_model(args.model)
    generator = Generator(model, tokenizer, GenerationOptions(max_new_tokens=max_new_tokens))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    params = model.num_parameters() / 1e6

    # 2. Batch-1 first (so the CPU's max RSS after it is its own), then ours on its questions and on all.
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"baseline": timed_run(generator, baseline_questions, 1, Path(tmp), "baseline")}
        if len(baseline_questions) < len(questions):
            runs["ours_subset"] = timed_run(generator, baseline_questions, batch_size, Path(tmp), "ours_subset")
        runs["ours"] = timed_run(generator, questions, batch_size, Path(tmp), "ours")

    load_after = os.getloadavg()[0]

    # 3. Ratios and agreement of the greedy answers.
    base, ours = runs["baseline"], runs["ours"]
    like_for_like = runs.get("ours_subset", ours)
    same = sum(ours["outputs"][qid] == text for qid, text in base["outputs"].items())
    figures = {
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "parameters_m": round(params, 1),
        "dtype": dtype,
        "max_new_tokens": max_new_tokens,
        "seed": args.seed,
        "load_average_1min": [load_before, load_after],
        "speedup_same_questions": like_for_like["questions_per_s"] / base["questions_per_s"],
        "speedup_all_vs_baseline": ours["questions_per_s"] / base["questions_per_s"],
        "identical_outputs": same,
        "compared_outputs": len(base["outputs"]),
        **{name: {k: v for k, v in run.items() if k != "outputs"} for name, run in runs.items()},
    }

    print(f"device: {figures['device']} | torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {figures['python']}")  # fmt: skip
    print(f"1-min load average: {load_before:.1f} at the start, {load_after:.1f} at the end ({os.cpu_count()} cores)")
    print(f"model: {args.model} ({params:.1f}M parameters, {dtype} on {model.device}), greedy, "
          f"max_new_tokens {max_new_tokens}")  # fmt: skip
    print(f"questions: {len(questions):,} of the {total:,} dev-split test questions (seed {args.seed}); "
          f"baseline on the first {len(baseline_questions):,}")  # fmt: skip
    memory = "peak MiB" if cuda else "max RSS MiB"
    print(f"  {'':<16} {'questions':>9} {'batch':>5} {'seconds':>9} {'questions/s':>11} {'gen tokens':>10} "
          f"{'tokens/s':>9} {'mean prompt':>11} {memory:>9}")  # fmt: skip
    print(row("baseline (b=1)", base))
    if "ours_subset" in runs:
        print(row("ours (subset)", runs["ours_subset"]))
    print(row("ours", ours))
    n_base = len(baseline_questions)
    print(f"  speed-up on the same {n_base:,} questions: {figures['speedup_same_questions']:.1f}x")
    if "ours_subset" in runs:
        print(f"  speed-up, ours on all {len(questions):,} vs baseline on {n_base:,}: "
              f"{figures['speedup_all_vs_baseline']:.1f}x")  # fmt: skip
    print(f"  identical greedy answers (raw_output): {same}/{len(base['outputs'])}")
    if cuda:
        verdict = "met" if figures["speedup_same_questions"] >= GOAL else "NOT met"
        print(f"  goal on a GPU: >= {GOAL:g}x questions/s: {verdict}")
    else:
        print(f"  (the >= {GOAL:g}x goal is for a GPU; on a CPU the ratio is for information)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
