"""Timing: best of N runs of a function, test.py's answering timed end to end, arms interleaved chunk by chunk."""

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .machine import PeakMemory


def best_time(function, repeats: int, *args) -> tuple[float, object]:
    """(best wall time in seconds of ``function(*args)`` over ``repeats`` runs, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def warm_up(answerer, questions: list[dict], batch_size: int) -> None:
    """One short generate of a full batch of the first question, so that no timed run pays the first call's set-up."""
    from llama_squad.generation import GenerationOptions, Generator

    warm = Generator(answerer.generator.model, answerer.tokenizer, GenerationOptions(max_new_tokens=2))
    prompt = answerer.prompt_ids(questions[0]["prompt"], last_turn=True)[0]
    warm.generate([prompt] * min(batch_size, len(questions)))


def timed_run(
    answerer, questions: list[dict], batch_size: int, folder: Path, label: str, warm: bool = True, reset_rss=False
) -> dict:
    """Warm up (unless ``warm`` is false: the model already ran this batch size), then time test.py's
    ``answer_examples`` with ``answerer`` (:class:`llama_squad.evaluation.Answerer`) end to end into
    ``folder/label``; its figures and raw outputs by id. Peak memory: CUDA's allocator peak during the run; on a CPU
    the process's peak RSS during the run with ``reset_rss``, else the largest so far."""
    from llama_squad.evaluation import answer_examples
    from llama_squad.results import read_results

    if warm:
        warm_up(answerer, questions, batch_size)
    memory = PeakMemory()
    memory.start(reset_rss)
    output_csv = folder / label / "results.csv"
    start = time.perf_counter()
    answered, _ = answer_examples(answerer, questions, output_csv, batch_size, progress=sys.stderr.isatty())
    peak = memory.peak_mib()  # waits for the GPU
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
        "peak_memory_mib": peak,
        "outputs": dict(zip(results["id"], results["raw_output"], strict=True)),
    }


def add_runs(total: dict, run: dict) -> dict:
    """Two timed runs of one arm on different questions, as one."""
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


def arm_order(arms: Sequence, k: int) -> list:
    """The order in which the arms answer chunk ``k``: rotated by one from chunk to chunk (two arms: AB, BA, AB, ...),
    so that a change of the machine's load slows every arm alike."""
    k %= len(arms)
    return [*arms[k:], *arms[:k]]


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


def interleaved_runs(answerers: dict, chunks: list[list[dict]], batch_size: int, folder: Path) -> dict[str, dict]:
    """Every arm (label: answerer) on the same questions, chunk by chunk in :func:`arm_order`; each arm's figures
    added up over the chunks (:func:`add_runs`, with each chunk's questions, seconds and mean prompt under
    ``chunks``), its peak memory the largest of a chunk's (the peak reset before each)."""
    runs: dict[str, dict] = {}
    for k, chunk in enumerate(chunks):
        for label in arm_order(list(answerers), k):
            run = timed_run(answerers[label], chunk, batch_size, folder / str(k), label, warm=k == 0, reset_rss=True)
            run["chunks"] = [{key: run[key] for key in ("questions", "seconds", "mean_prompt_tokens")}]
            runs[label] = add_runs(runs[label], run) if label in runs else run
    return runs
