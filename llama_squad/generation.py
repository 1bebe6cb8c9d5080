"""Batched, resumable answer generation over a dataset split, scored into one results row per question."""

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_squad.results import ResultsWriter, result_columns
from llama_squad.tasks import get_task
from llama_squad.tokenization import end_of_turn_token_id, tokenize_prompt

logger = logging.getLogger(__name__)

ANSWER_PREFIX = '{"answer": "'  # what --force_answer writes for the model before it answers


@dataclass
class GenerationOptions:
    """How to decode: greedy by default, or beam search / sampling."""

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    force_answer: bool = False

    def problems(self) -> list[str]:
        """What is wrong with these options, one line per option (empty when they are fine)."""
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"--max_new_tokens {self.max_new_tokens}: give a positive number of tokens (e.g. 64)")
        if self.num_beams < 1:
            problems.append(f"--num_beams {self.num_beams}: give 1 (greedy or sampling) or more (beam search)")
        if self.do_sample:
            if not self.temperature > 0:
                problems.append(f"--temperature {self.temperature}: must be > 0 (or drop --do_sample for greedy)")
            if not 0 < self.top_p <= 1:
                problems.append(f"--top_p {self.top_p}: must be in (0, 1]")
            if self.top_k < 0:
                problems.append(f"--top_k {self.top_k}: must be >= 0 (0 turns it off)")
        return problems

    def generate_kwargs(self, stop_ids: list[int], pad_id: int) -> dict:
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
            "eos_token_id": stop_ids,
            "pad_token_id": pad_id,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class Conversation:
    """One example being answered turn by turn (multi-turn prompts ask one instruction at a time)."""

    example: dict
    messages: list[dict]
    follow_ups: list[dict]  # the user turns still to ask, in order
    turns_left: int
    outputs: list[str] = field(default_factory=list)
    next_prompt: tuple[list[int], str] | None = None  # the next turn's prompt ids and prefix, when already tokenized
    prompt_tokens: int = 0
    completion_tokens: int = 0


def start_conversation(example: dict) -> Conversation:
    completion = example["completion"]
    return Conversation(
        example=example,
        messages=list(example["prompt"]),
        follow_ups=[m for m in completion if m["role"] == "user"],
        turns_left=sum(m["role"] == "assistant" for m in completion),
    )


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask): generation continues from the right edge."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


class Generator:
    """Answers chat prompts in batches with a model and its tokenizer."""

    def __init__(self, model, tokenizer, options: GenerationOptions):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        stop = [end_of_turn_token_id(tokenizer)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
            stop.append(tokenizer.eos_token_id)
        self.stop_ids = stop
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]

    def prompt_ids(self, messages: list[dict], last_turn: bool) -> tuple[list[int], str]:
        prefix = ANSWER_PREFIX if self.options.force_answer and last_turn else None
        return tokenize_prompt(self.tokenizer, messages, assistant_prefix=prefix), prefix or ""

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]]) -> list[tuple[str, int]]:
        """(text, number of generated tokens) for each prompt, stopping at the end-of-turn token."""
        input_ids, attention_mask = left_pad(prompts, self.pad_id)
        device = self.model.device
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **self.options.generate_kwargs(self.stop_ids, self.pad_id),
        )
        results = []
        for row in out[:, input_ids.shape[1] :].tolist():
            n = len(row)
            for i, token in enumerate(row):
                if token in self.stop_ids:
                    n = i + 1
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append((text, n))
        return results

    def answer(self, conversations: list[Conversation]) -> None:
        """Run every turn of every conversation (each turn batched across conversations)."""
        active = [c for c in conversations if c.turns_left > 0]
        while active:
            batch = []
            for c in active:
                ids, prefix = c.next_prompt or self.prompt_ids(c.messages, last_turn=c.turns_left == 1)
                c.next_prompt = None
                batch.append((c, ids, prefix))
            outputs = self.generate([ids for _, ids, _ in batch])
            for (c, ids, prefix), (text, n) in zip(batch, outputs, strict=True):
                text = prefix + text.rstrip() if prefix else text.strip()
                c.prompt_tokens = len(ids)
                c.completion_tokens += n
                c.outputs.append(text)
                c.turns_left -= 1
                c.messages.append({"role": "assistant", "content": text})
                if c.turns_left and c.follow_ups:
                    c.messages.append(c.follow_ups.pop(0))
            active = [c for c in active if c.turns_left > 0]


def batches_by_length(examples: list[dict], lengths: list[int], batch_size: int) -> Iterator[list[dict]]:
    """Batches of similar prompt lengths (longest first, so an out-of-memory shows at once): little padding."""
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


def results_rows(task, conversation: Conversation) -> list[dict]:
    """The scored results rows of one answered example (the last turn's output is the answer)."""
    example = conversation.example
    raw = conversation.outputs[-1]
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
        }
        row.update({k: example[k] for k in task.EXTRA_RESULT_COLUMNS if k in example})
        row.update(scored)
        rows.append(row)
    return rows


def run_generation(
    generator: Generator | None,
    examples,
    output_csv: str | Path,
    batch_size: int,
    progress: bool = True,
    skip_ids: frozenset[str] | set[str] = frozenset(),
) -> tuple[int, float]:
    """Answer every example not yet in ``output_csv`` (nor in ``skip_ids``: answered in other files of the same
    run, such as other processes' shards), appending scored rows batch by batch.

    Re-running after a crash or Ctrl-C resumes: finished examples are skipped, none is written twice. The generator
    may be None when nothing is left to answer. Returns (examples answered now, seconds spent).
    """
    from tqdm.auto import tqdm

    if len(examples) == 0:
        raise ValueError("no examples to answer: the split is empty")
    task = get_task(examples[0]["task"])
    writer = ResultsWriter(output_csv, result_columns(task))
    todo = [ex for ex in examples if str(ex["id"]) not in writer.done and str(ex["id"]) not in skip_ids]
    if not todo:
        logger.info("%s already holds all %d examples", output_csv, len(examples))
        return 0, 0.0
    if generator is None:
        raise ValueError(f"{output_csv}: {len(todo)} examples are still to answer, and no model was given")
    conversations = {}
    for ex in todo:  # tokenize each first prompt once: for sorting by length, then for generating
        conversation = start_conversation(ex)
        conversation.next_prompt = generator.prompt_ids(conversation.messages, last_turn=conversation.turns_left == 1)
        conversations[ex["id"]] = conversation
    lengths = [len(conversations[ex["id"]].next_prompt[0]) for ex in todo]
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="q", desc="generating", disable=not progress, dynamic_ncols=True)
    done = 0
    for batch in batches_by_length(todo, lengths, batch_size):
        answered = [conversations.pop(ex["id"]) for ex in batch]
        generator.answer(answered)
        writer.write([row for c in answered for row in results_rows(task, c)])
        done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(q_per_s=f"{done / (time.perf_counter() - start):.2f}")
    bar.close()
    return done, time.perf_counter() - start


def save_metrics(metrics: dict, path: str | Path) -> None:
    """Write the run's metrics as strict JSON (undefined values as null), atomically."""
    from llama_squad.io import atomic_write_json

    def plain(value):
        value = value.item() if hasattr(value, "item") else value  # numpy scalars
        if isinstance(value, float):
            return None if math.isnan(value) else round(value, 6)  # undefined (e.g. no abstentions): null, not NaN
        return value

    atomic_write_json(path, {key: plain(value) for key, value in metrics.items()})


def dataset_fingerprint(dataset_path: str, split: str) -> str:
    """A content hash of a saved split's data files: the same questions and prompts give the same fingerprint."""
    from llama_squad.io import fingerprint_files

    return fingerprint_files(sorted((Path(dataset_path) / split).glob("*.arrow")))


def load_examples(dataset_path: str, split: str, limit: int | None):
    """The split of a dataset written by create_dataset.py (the first ``limit`` rows), checked to be one."""
    from datasets import load_from_disk

    from llama_squad.io import InputError
    from llama_squad.tasks import TASK_MODULES
    from llama_squad.tasks.common import DATASET_COLUMNS

    if not (Path(dataset_path) / "dataset_dict.json").exists():
        raise InputError(f"{dataset_path}: not a dataset folder written by create_dataset.py (no dataset_dict.json)")
    try:
        dataset = load_from_disk(dataset_path)
    except (OSError, ValueError) as e:  # a missing or corrupt data file
        raise InputError(
            f"{dataset_path}: cannot read the dataset ({e}); write it again with create_dataset.py"
        ) from None
    if split not in dataset:
        raise InputError(f"{dataset_path}: no split {split!r} (it has {', '.join(dataset)}): pick one with --split")
    examples = dataset[split]
    missing = [c for c in DATASET_COLUMNS if c not in examples.column_names]
    if missing:
        raise InputError(
            f"{dataset_path}: the {split} split lacks the columns {missing} (it has {examples.column_names}); "
            "it was not written by create_dataset.py: build it with create_dataset.py"
        )
    if len(examples) == 0:
        raise InputError(f"{dataset_path}: the {split} split is empty: nothing to answer")
    tasks = set(examples.unique("task"))
    if len(tasks) != 1 or not tasks <= set(TASK_MODULES):
        raise InputError(f"{dataset_path}: the {split} split must hold one known task, it holds {sorted(tasks)}")
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))))
    return [dict(ex) for ex in examples]
