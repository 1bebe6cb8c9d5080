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
    share_prefix: bool = True  # compute the prompt prefix a group of questions shares once (greedy / sampling)

    @property
    def shares_prefixes(self) -> bool:
        """Whether questions that share a prompt prefix are batched together and the prefix computed once (greedy
        and sampling; beam search runs every prompt whole)."""
        return self.share_prefix and self.num_beams == 1

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
    shared: int = 0  # how many first prompt tokens it shares with the other questions of its group (every turn)
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


def cache_kwarg(model) -> str:
    """The name under which ``generate`` takes a precomputed cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier releases, and a deprecated alias since)."""
    import inspect

    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


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

    def __init__(self, model, tokenizer, options: GenerationOptions, pause=None):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.pause = pause  # the model's pause tokens (llama_squad.pause.PauseTokens), placed as in training
        stop = [end_of_turn_token_id(tokenizer)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
            stop.append(tokenizer.eos_token_id)
        self.stop_ids = stop
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]

    def prompt_ids(self, messages: list[dict], last_turn: bool) -> tuple[list[int], str]:
        """The prompt ids of a turn, and the text prefilled for the model that belongs to its answer."""
        prefix = ANSWER_PREFIX if self.options.force_answer and last_turn else None
        written = prefix or ""
        if self.pause is not None and last_turn:  # the pauses: part of the prompt, never of the answer
            messages, pauses = self.pause.prompt_messages(messages)
            written = pauses + written
        return tokenize_prompt(self.tokenizer, messages, assistant_prefix=written or None), prefix or ""

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], prefix_lengths: list[int] | None = None) -> list[tuple[str, int]]:
        """(text, number of generated tokens) for each prompt, stopping at the end-of-turn token.

        ``prefix_lengths[i]``: how many first tokens prompt ``i`` shares with the other prompts of its group (rows with
        the same first tokens). Each distinct prefix then goes through the model once, and its keys and values are
        handed to every row that starts with it (``shared_prefix_cache``); without them every row is run whole.
        """
        prefixes = None
        if prefix_lengths is not None and self.options.shares_prefixes and min(prefix_lengths) > 0:
            prefixes = [tuple(p[:n]) for p, n in zip(prompts, prefix_lengths, strict=True)]
            if any(len(prefix) >= len(p) for prefix, p in zip(prefixes, prompts, strict=True)):
                prefixes = None  # every row must keep one token of its own to feed
        kwargs = self.options.generate_kwargs(self.stop_ids, self.pad_id)
        if prefixes is None or len(set(prefixes)) == len(prefixes):  # nothing shared: one pass, as is
            input_ids, attention_mask = left_pad(prompts, self.pad_id)
        else:
            input_ids, attention_mask, cache = self.shared_prefix_cache(prompts, prefixes)
            kwargs[cache_kwarg(self.model)] = cache
        device = self.model.device
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
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

    def shared_prefix_cache(self, prompts: list[list[int]], prefixes: list[tuple[int, ...]]):
        """The inputs of ``generate`` for prompts that start with ``prefixes`` (a few distinct ones), and the cache of
        those prefixes: (input_ids, attention_mask, cache).

        The distinct prefixes run through the model once, left-padded, at the positions the full prompts give them;
        their cache rows are then repeated for every prompt that starts with each (transformers' ``DynamicCache``,
        ``batch_select_indices``). Each input row is its prefix as padded there, then its own tokens, left-padded
        among themselves: ``[pad.. prefix][pad.. own tokens]``, the pads masked; the positions that ``generate``
        derives from the mask are those of the prompt alone.
        """
        distinct = list(dict.fromkeys(prefixes))
        group = {prefix: k for k, prefix in enumerate(distinct)}
        device = self.model.device
        prefix_ids, prefix_mask = left_pad([list(p) for p in distinct], self.pad_id)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=prefix_ids.to(device),
            attention_mask=prefix_mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
        )
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        rows = [group[prefix] for prefix in prefixes]
        cache.batch_select_indices(torch.tensor(rows, device=device))
        own = [p[len(prefix) :] for p, prefix in zip(prompts, prefixes, strict=True)]
        own_ids, own_mask = left_pad(own, self.pad_id)
        input_ids = torch.cat([prefix_ids[rows], own_ids], dim=1)
        attention_mask = torch.cat([prefix_mask[rows], own_mask], dim=1)
        return input_ids, attention_mask, cache

    def answer(self, conversations: list[Conversation]) -> None:
        """Run every turn of every conversation (each turn batched across conversations)."""
        active = [c for c in conversations if c.turns_left > 0]
        while active:
            batch = []
            for c in active:
                ids, prefix = c.next_prompt or self.prompt_ids(c.messages, last_turn=c.turns_left == 1)
                c.next_prompt = None
                batch.append((c, ids, prefix))
            outputs = self.generate([ids for _, ids, _ in batch], [c.shared for c, _, _ in batch])
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


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


def prefix_groups(prompts: list[list[int]], batch_size: int, min_fraction: float = 0.5) -> list[tuple[list[int], int]]:
    """Groups of consecutive prompts that share most of their tokens: (indices, tokens all of them share).

    A prompt joins the group of the prompt before it when they share at least ``min_fraction`` of its tokens and the
    group holds fewer than ``batch_size``: the 30 slot questions of one MultiWOZ turn (the dialogue first, the slot
    last), the questions of one SQuAD paragraph (the context first). Datasets are stored in that order. Each prompt
    keeps at least its last token of its own.
    """
    groups: list[tuple[list[int], int]] = []
    for i, prompt in enumerate(prompts):
        if groups:
            members, shared = groups[-1]
            common = common_prefix_length(prompts[members[0]], prompt)
            if len(members) < batch_size and common >= min_fraction * len(prompt):
                members.append(i)
                groups[-1] = (members, min(shared, common, len(prompt) - 1))
                continue
        groups.append(([i], len(prompt) - 1))
    return groups


def batches_of_groups(groups: list[tuple[list[int], int]], lengths: list[int], batch_size: int) -> Iterator[list]:
    """Whole groups packed into batches of at most ``batch_size`` prompts, longest first (an out-of-memory shows at
    once; similar lengths pad little): lists of (index, shared prefix length)."""
    groups = sorted(groups, key=lambda g: -max(lengths[i] for i in g[0]))
    batch: list[tuple[int, int]] = []
    for members, shared in groups:
        if batch and len(batch) + len(members) > batch_size:
            yield batch
            batch = []
        batch.extend((i, shared) for i in members)
    if batch:
        yield batch


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
    if generator.options.shares_prefixes:
        groups = prefix_groups([conversations[ex["id"]].next_prompt[0] for ex in todo], batch_size)
        batches = []
        for batch in batches_of_groups(groups, lengths, batch_size):
            for i, shared in batch:
                conversations[todo[i]["id"]].shared = shared
            batches.append([todo[i] for i, _ in batch])
    else:
        batches = batches_by_length(todo, lengths, batch_size)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="q", desc="generating", disable=not progress, dynamic_ncols=True)
    done = 0
    for batch in batches:
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
