"""Answering a split in batches into one scored results row per question, resumably, and the run's metrics file."""

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

from llama_squad.answers import parse_json_answer
from llama_squad.evaluation.answering import Answerer, Conversation, start_conversation
from llama_squad.evaluation.batching import batches_by_length, batches_of_groups, prefix_groups
from llama_squad.generation import Generator
from llama_squad.results import ResultsWriter, result_columns
from llama_squad.tasks import get_task

logger = logging.getLogger(__name__)


def results_rows(task, conversation: Conversation, constrain: str = "none") -> list[dict]:
    """The scored results rows of one answered example (the last turn's output is the answer); ``constrain``: the
    ``--constrain`` mode it was generated with."""
    example = conversation.example
    raw = conversation.outputs[-1]
    probe = task.value_probe(example)
    best = ""
    if conversation.best_output is not None and probe is not None:
        best = parse_json_answer(conversation.best_output, probe[0]).answer or ""
    prob = conversation.no_answer_prob
    rows = []
    for scored in task.score_output(raw, example):
        row = {
            "example_id": example["id"],
            "id": example["id"],
            "task": example["task"],
            "question": example["question"],
            "answers": list(example["answers"]),
            "raw_output": raw,
            "prompt_tokens": conversation.prompt_tokens,
            "completion_tokens": conversation.completion_tokens,
            "constrain": constrain,
            "no_answer_prob": "" if prob is None else round(prob, 6),
            "best_answer": best,
        }
        row.update({k: example[k] for k in task.extra_result_columns if k in example})
        row.update(scored)
        rows.append(row)
    return rows


def answer_examples(
    answerer: Answerer | None,
    examples,
    output_csv: str | Path,
    batch_size: int,
    progress: bool = True,
    skip_ids: frozenset[str] | set[str] = frozenset(),
) -> tuple[int, float]:
    """Answer every example not yet in ``output_csv`` (nor in ``skip_ids``: answered in other files of the same
    run, such as other processes' shards), appending scored rows batch by batch.

    Re-running after a crash or Ctrl-C resumes: finished examples are skipped, none is written twice. The answerer
    may be None when nothing is left to answer. Returns (examples answered now, seconds spent).
    """
    if len(examples) == 0:
        raise ValueError("no examples to answer: the split is empty")
    task = get_task(examples[0]["task"])
    writer = ResultsWriter(output_csv, result_columns(task))
    todo = [ex for ex in examples if str(ex["id"]) not in writer.done and str(ex["id"]) not in skip_ids]
    if not todo:
        logger.info("%s already holds all %d examples", output_csv, len(examples))
        return 0, 0.0
    if answerer is None:
        raise ValueError(f"{output_csv}: {len(todo)} examples are still to answer, and no model was given")
    start = time.perf_counter()
    for rows in answered_batches(answerer, todo, batch_size, progress):
        writer.write(rows)
    return len(todo), time.perf_counter() - start


def answered_batches(
    answerer: Answerer, examples: list[dict], batch_size: int, progress: bool = False, equal_batches: bool = False
) -> Iterator[list[dict]]:
    """The scored results rows of ``examples``, batch by batch as they are answered: batches of questions that share a
    prompt prefix where the options share them, else of similar lengths (longest first). ``equal_batches``: batches
    by length alone, so that processes answering shares of the same size make the same generate calls (a model
    sharded across them needs every process in every forward pass)."""
    from tqdm.auto import tqdm

    task = get_task(examples[0]["task"])
    conversations = {}
    for ex in examples:  # tokenize each first prompt once: for sorting by length, then for generating
        conversation = start_conversation(ex)
        conversation.next_prompt = answerer.prompt_ids(conversation.messages, last_turn=conversation.turns_left == 1)
        conversations[ex["id"]] = conversation
    lengths = [len(conversations[ex["id"]].next_prompt[0]) for ex in examples]
    warn_beyond_context(answerer.generator, examples, lengths)
    if answerer.options.shares_prefixes and not equal_batches:
        groups = prefix_groups([conversations[ex["id"]].next_prompt[0] for ex in examples], batch_size)
        batches = []
        for batch in batches_of_groups(groups, lengths, batch_size):
            for i, shared in batch:
                conversations[examples[i]["id"]].shared = shared
            batches.append([examples[i] for i, _ in batch])
    else:
        batches = batches_by_length(examples, lengths, batch_size)
    start = time.perf_counter()
    bar = tqdm(total=len(examples), unit="q", desc="generating", disable=not progress, dynamic_ncols=True)
    done = 0
    for batch in batches:
        answered = [conversations.pop(ex["id"]) for ex in batch]
        answerer.answer(answered)
        yield [row for c in answered for row in results_rows(task, c, answerer.options.constrain)]
        done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(q_per_s=f"{done / (time.perf_counter() - start):.2f}")
    bar.close()


def warn_beyond_context(generator: Generator, examples: list[dict], lengths: list[int]) -> int:
    """Warn once when prompts and their answers (``--max_new_tokens``) run past the model's context
    (``max_position_embeddings``): the model answers them all the same, from positions it was never trained on.
    Returns how many do."""
    context = getattr(generator.model.config, "max_position_embeddings", None)
    if not context:
        return 0
    budget = generator.options.max_new_tokens
    beyond = [(n, ex["id"]) for ex, n in zip(examples, lengths, strict=True) if n + budget > context]
    if beyond:
        longest, first = max(beyond)
        logger.warning(
            "%d of %d prompts with their answers (--max_new_tokens %d) run past the model's context of %d tokens "
            "(the longest: %d tokens, question %s): the model answers them from positions it was never trained on, "
            "and such answers are unreliable; leave these questions out of the dataset, or use a model with a longer "
            "context",
            len(beyond), len(examples), budget, context, longest, first,
        )  # fmt: skip
    return len(beyond)


def save_metrics(metrics: dict, path: str | Path) -> None:
    """Write the run's metrics as strict JSON (undefined values as null), atomically."""
    from llama_squad.files import atomic_write_json

    def plain(value):
        value = value.item() if hasattr(value, "item") else value  # numpy scalars
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 6)  # undefined (e.g. no abstentions): null, not NaN
        return value

    atomic_write_json(path, {key: plain(value) for key, value in metrics.items()})
