"""Batched, resumable answer generation over a dataset split, scored into one results row per question."""

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llama_squad.results import ResultsWriter, result_columns
from llama_squad.tasks import get_task
from llama_squad.tokenization import end_of_turn_token_id, tokenize_prompt

logger = logging.getLogger(__name__)

ANSWER_PREFIX = '{"answer": "'  # what --force_answer writes for the model before it answers
CONSTRAIN_MODES = ("none", "json", "extractive")  # --constrain (llama_squad.constrain.MODES)


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
    # --constrain (llama_squad/constrain/): none; json: one JSON object of the task's form; extractive: also every
    # value a span of the context / dialogue or a fixed choice ("?", "dontcare", a categorical slot's values)
    constrain: str = "none"

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
        if self.constrain not in CONSTRAIN_MODES:
            problems.append(f"--constrain {self.constrain!r}: choose one of {', '.join(CONSTRAIN_MODES)}")
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


SDPA_GQA_VARIABLE = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def grouped_query_attention_on_cpu(device):
    """On a CPU, let transformers' SDPA attention hand grouped key/value heads to torch as they are (``enable_gqa``)
    instead of repeating them for every query head.

    transformers (5.2x) passes ``enable_gqa`` only without an attention mask, because CUDA's fused kernels take no
    mask with it; otherwise it copies each layer's keys and values once per query head (``repeat_kv``). torch's CPU
    kernel takes a mask with ``enable_gqa`` and gives the same numbers (``tests/test_kv_cache.py``). It matters when
    several tokens attend to a long cache: the 30 slot questions of a MultiWOZ turn after their shared dialogue read
    three copies of its keys and values per layer without it (SmolLM2: 9 query heads, 3 key/value heads).
    transformers reads the variable at each call; releases without it ignore it.
    """
    if torch.device(device).type != "cpu" or os.environ.get(SDPA_GQA_VARIABLE) is not None:
        yield
        return
    os.environ[SDPA_GQA_VARIABLE] = "1"
    try:
        yield
    finally:
        os.environ.pop(SDPA_GQA_VARIABLE, None)


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask): generation continues from the right edge."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


@dataclass
class TurnCache:
    """What one turn of a batch of conversations left in the model's cache, for the next turn to start from.

    ``ids``/``mask``: the columns the cache covers (left-padded prompts, then generated tokens); ``tokens[i]``: the
    tokens of row ``i`` that the cache holds, in order (its unmasked columns, up to where the row stopped).
    """

    cache: object
    ids: torch.Tensor
    mask: torch.Tensor
    tokens: list[list[int]]
    device: torch.device | str = "cpu"  # the cache's

    def select(self, rows: list[int]) -> "TurnCache":
        """The cache of these rows only (conversations that have turns left), in this order."""
        index = torch.tensor(rows, dtype=torch.long)
        self.cache.batch_select_indices(index.to(self.device))
        return TurnCache(self.cache, self.ids[index], self.mask[index], [self.tokens[r] for r in rows], self.device)

    def extend(self, prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of ``generate`` for the next prompts of the same rows: each row keeps the
        columns of its longest cached prefix of its new prompt (the rest is masked: a turn's text can tokenize
        differently once the chat template renders it) and feeds the remaining tokens, left-padded after them."""
        mask = self.mask.clone()
        own = []
        for row, (tokens, prompt) in enumerate(zip(self.tokens, prompts, strict=True)):
            keep = min(common_prefix_length(tokens, prompt), len(prompt) - 1)
            columns = mask[row].nonzero().flatten()
            mask[row, columns[keep:]] = 0
            own.append(prompt[keep:])
        own_ids, own_mask = left_pad(own, pad_id)
        return torch.cat([self.ids, own_ids], dim=1), torch.cat([mask, own_mask], dim=1)


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
        self.streamer = None  # a transformers streamer (TextIteratorStreamer) fed by every generate call, if set
        self.constrainer = None  # --constrain: built on first use (llama_squad.constrain.Constrainer)

    def prompt_ids(self, messages: list[dict], last_turn: bool) -> tuple[list[int], str]:
        """The prompt ids of a turn, and the text prefilled for the model that belongs to its answer."""
        prefix = ANSWER_PREFIX if self.options.force_answer and last_turn else None
        written = prefix or ""
        if self.pause is not None and last_turn:  # the pauses: part of the prompt, never of the answer
            messages, pauses = self.pause.prompt_messages(messages)
            written = pauses + written
        return tokenize_prompt(self.tokenizer, messages, assistant_prefix=written or None), prefix or ""

    # --constrain: begin
    def grammars(self, batch: list[tuple[Conversation, list[int], str]]) -> list | None:
        """The grammar that constrains each prompt's answer (None: free; only a last turn is constrained), or None
        when ``--constrain none``."""
        if self.options.constrain == "none":
            return None
        from llama_squad.constrain import Constrainer

        if self.constrainer is None:
            self.constrainer = Constrainer(self.tokenizer, self.stop_ids)
        grammars = []
        for c, _, prefix in batch:
            spec = get_task(c.example["task"]).constraint_of(c.example, self.options.constrain)
            grammars.append(None if spec is None or c.turns_left != 1 else self.constrainer.grammar(spec, prefix))
        return grammars

    # --constrain: end

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        prefix_lengths: list[int] | None = None,
        grammars: list | None = None,
        previous: TurnCache | None = None,
        keep_cache: bool = False,
    ) -> tuple[list[tuple[str, int]], TurnCache | None]:
        """(text, number of generated tokens) for each prompt, stopping at the end-of-turn token; and, with
        ``keep_cache``, the cache the batch leaves (for the next turn of the same conversations).

        ``prefix_lengths[i]``: how many first tokens prompt ``i`` shares with the other prompts of its group (rows with
        the same first tokens). Each distinct prefix then goes through the model once, and its keys and values are
        handed to every row that starts with it (``shared_prefix_cache``); without them every row is run whole.
        ``grammars[i]`` (``--constrain``): what the answer of prompt ``i`` may be (None: anything).
        ``previous``: the cache of the previous turn of these rows, whose prompts extend it: only the new tokens run.
        """
        from llama_squad.kv_cache import make_room, preallocated_cache

        kwargs = self.options.generate_kwargs(self.stop_ids, self.pad_id)
        prefixes = None
        if previous is None and prefix_lengths is not None and self.options.shares_prefixes and min(prefix_lengths):
            prefixes = [tuple(p[:n]) for p, n in zip(prompts, prefix_lengths, strict=True)]
            if any(len(prefix) >= len(p) for prefix, p in zip(prefixes, prompts, strict=True)):
                prefixes = None  # every row must keep one token of its own to feed
        if self.streamer is not None:
            kwargs["streamer"] = self.streamer
        if grammars is not None and any(g is not None for g in grammars):  # --constrain
            from transformers import LogitsProcessorList

            from llama_squad.constrain import ConstrainedLogitsProcessor

            processor = ConstrainedLogitsProcessor(grammars, self.options.num_beams, self.options.max_new_tokens)
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        if previous is not None:
            input_ids, attention_mask = previous.extend(prompts, self.pad_id)
            cache = previous.cache
        elif prefixes is None or len(set(prefixes)) == len(prefixes):  # nothing shared: one pass, as is
            input_ids, attention_mask = left_pad(prompts, self.pad_id)
            cache = preallocated_cache(self.model, 0) if self.options.num_beams == 1 else None
        else:
            input_ids, attention_mask, cache = self.shared_prefix_cache(prompts, prefixes)
        if cache is not None:  # decoding writes each step into the room left for it (llama_squad.kv_cache)
            make_room(cache, self.options.max_new_tokens)
            kwargs[cache_kwarg(self.model)] = cache
        device = self.model.device
        with grouped_query_attention_on_cpu(device):
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                return_dict_in_generate=keep_cache,
                **kwargs,
            )
        sequences = out.sequences if keep_cache else out
        width = input_ids.shape[1]
        results = []
        for row in sequences[:, width:].tolist():
            n = len(row)
            for i, token in enumerate(row):
                if token in self.stop_ids:
                    n = i + 1
                    break
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True)
            results.append((text, n))
        if not keep_cache:
            return results, None
        return results, self.turn_cache(out, attention_mask, [n for _, n in results])

    def turn_cache(self, out, attention_mask: torch.Tensor, generated: list[int]) -> TurnCache:
        """The cache ``generate`` returned, with the columns it covers and each row's tokens in it."""
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        covered = cache.get_seq_length()  # the last token generated was never fed: one column fewer
        ids = out.sequences[:, :covered].cpu()
        width = attention_mask.shape[1]
        mask = torch.zeros_like(ids)
        mask[:, :width] = attention_mask
        for row, n in enumerate(generated):
            mask[row, width : width + n] = 1  # generated up to its stop token; the columns after it are padding
        tokens = [ids[row][mask[row].bool()].tolist() for row in range(len(ids))]
        return TurnCache(cache, ids, mask, tokens, self.model.device)

    def shared_prefix_cache(self, prompts: list[list[int]], prefixes: list[tuple[int, ...]]):
        """The inputs of ``generate`` for prompts that start with ``prefixes`` (a few distinct ones), and the cache of
        those prefixes: (input_ids, attention_mask, cache).

        The distinct prefixes run through the model once, left-padded, at the positions the full prompts give them;
        their cache rows are then copied for every prompt that starts with each (``batch_select_indices`` of a
        ``DynamicCache`` of :class:`llama_squad.kv_cache.PreallocatedLayer`, with room for the prompt's own tokens and
        its answer, which are then written in place). Each input row is its prefix as padded there, then its own
        tokens, left-padded among themselves: ``[pad.. prefix][pad.. own tokens]``, the pads masked; the positions
        that ``generate`` derives from the mask are those of the prompt alone.
        """
        from llama_squad.kv_cache import make_room, preallocated_cache

        distinct = list(dict.fromkeys(prefixes))
        group = {prefix: k for k, prefix in enumerate(distinct)}
        device = self.model.device
        prefix_ids, prefix_mask = left_pad([list(p) for p in distinct], self.pad_id)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        cache = preallocated_cache(self.model, 0)
        with grouped_query_attention_on_cpu(device):
            self.model(
                input_ids=prefix_ids.to(device),
                attention_mask=prefix_mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                logits_to_keep=1,  # only the cache is wanted: no logits over the whole prefix
                **{cache_kwarg(self.model): cache},
            )
        own = [p[len(prefix) :] for p, prefix in zip(prompts, prefixes, strict=True)]
        own_ids, own_mask = left_pad(own, self.pad_id)
        make_room(cache, own_ids.shape[1] + self.options.max_new_tokens)  # the prompts' own tokens, then the answers
        rows = [group[prefix] for prefix in prefixes]
        cache.batch_select_indices(torch.tensor(rows, device=device))
        input_ids = torch.cat([prefix_ids[rows], own_ids], dim=1)
        attention_mask = torch.cat([prefix_mask[rows], own_mask], dim=1)
        return input_ids, attention_mask, cache

    def answer(self, conversations: list[Conversation]) -> None:
        """Run every turn of every conversation (each turn batched across conversations). When prefixes are shared,
        a turn starts from the cache the previous turn left: the context is read once per conversation, not once per
        turn."""
        active = [c for c in conversations if c.turns_left > 0]
        previous = None
        while active:
            batch = []
            for c in active:
                ids, prefix = c.next_prompt or self.prompt_ids(c.messages, last_turn=c.turns_left == 1)
                c.next_prompt = None
                batch.append((c, ids, prefix))
            keep = self.options.shares_prefixes and any(c.turns_left > 1 for c in active)
            prompts, shared = [ids for _, ids, _ in batch], [c.shared for c, _, _ in batch]
            outputs, cache = self.generate(prompts, shared, self.grammars(batch), previous=previous, keep_cache=keep)
            for (c, ids, prefix), (text, n) in zip(batch, outputs, strict=True):
                text = prefix + text.rstrip() if prefix else text.strip()
                c.prompt_tokens = len(ids)
                c.completion_tokens += n
                c.outputs.append(text)
                c.turns_left -= 1
                c.messages.append({"role": "assistant", "content": text})
                if c.turns_left and c.follow_ups:
                    c.messages.append(c.follow_ups.pop(0))
            rows = [row for row, c in enumerate(active) if c.turns_left > 0]
            active = [active[row] for row in rows]
            previous = cache.select(rows) if cache is not None and rows else None


def load_generator(
    model_args,
    options: GenerationOptions,
    *,
    adapter_path: str | None = None,
    merge_adapter: bool = True,
    seed: int = 42,
    device_map=None,
) -> Generator:
    """The Generator of test.py and the chat: the model ``model_args`` (ModelLoadingArguments) name and say how to
    load, with the adapter at ``adapter_path`` (see :func:`llama_squad.models.load_for_inference`), prompted with the
    pause tokens it was trained with (pause_tokens.json beside it), if any; sampling seeded with ``seed``."""
    import transformers

    from llama_squad import models
    from llama_squad import pause as pause_tokens

    pause_tokens.check_file(adapter_path or model_args.model_name_or_path)  # before the model loads
    model, tokenizer = models.load_for_inference(
        model_args, adapter_path=adapter_path, merge_adapter=merge_adapter, device_map=device_map
    )
    transformers.set_seed(seed)
    if adapter_path:
        pause = pause_tokens.for_model(adapter_path, tokenizer)
    else:
        trained = models.resolve_model_path(model_args.model_name_or_path, model_args.model_cache_dir)
        pause = pause_tokens.for_model(trained, tokenizer, revision=model_args.model_revision)
    return Generator(model, tokenizer, options, pause=pause)


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


def prefix_groups(prompts: list[list[int]], batch_size: int) -> list[tuple[list[int], int]]:
    """Consecutive prompts split into groups that share a prefix: (indices, tokens all of them share), each group of at
    most ``batch_size`` prompts, so that the model reads as few tokens as it can.

    A group's prefix runs once, then every member's own tokens, padded to the longest: it costs ``shared + members *
    (longest - shared)`` tokens, and a prompt alone costs its length. The split of least total cost is found exactly
    (dynamic programming over the split points). Datasets are stored with the prompts that share a prefix together:
    the 30 slot questions of one MultiWOZ turn (the dialogue first, the slot last), the questions of one SQuAD
    paragraph (the context first). Consecutive turns of a dialogue share most of their tokens too, but each later turn
    brings new dialogue, which all of its questions would feed on their own: the cost keeps the turns apart (on the
    benchmark's 42 sampled turns: one group per turn at slot level, for any batch size from 30 up). Each prompt keeps
    at least its last token of its own.
    """
    import numpy as np

    n = len(prompts)
    if n == 0:
        return []
    lengths = np.array([len(p) for p in prompts])
    # adjacent[i]: tokens prompt i shares with prompt i + 1; a run of prompts shares the least of its adjacent pairs
    adjacent = np.array([common_prefix_length(prompts[i], prompts[i + 1]) for i in range(n - 1)], dtype=np.int64)
    best = np.zeros(n + 1)  # best[j]: the least cost of the first j prompts
    start = np.zeros(n + 1, dtype=np.int64)  # where the last group of that split starts
    shared_of = np.zeros(n + 1, dtype=np.int64)
    for j in range(n):  # the group that ends with prompt j starts at j, j - 1, ... (the latest start first: ties)
        first = max(0, j - batch_size + 1)
        members = np.arange(1, j - first + 2)
        shortest = np.minimum.accumulate(lengths[first : j + 1][::-1])
        longest = np.maximum.accumulate(lengths[first : j + 1][::-1])
        common = np.concatenate(([lengths[j]], np.minimum.accumulate(adjacent[first:j][::-1])))
        shared = np.minimum(common, shortest - 1)
        cost = best[j - members + 1] + shared + members * (longest - shared)
        k = int(np.argmin(cost))
        best[j + 1], start[j + 1], shared_of[j + 1] = cost[k], j - k, shared[k]
    groups = []
    end = n
    while end > 0:
        groups.append((list(range(int(start[end]), end)), int(shared_of[end])))
        end = int(start[end])
    return groups[::-1]


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


def results_rows(task, conversation: Conversation, constrain: str = "none") -> list[dict]:
    """The scored results rows of one answered example (the last turn's output is the answer); ``constrain``: the
    ``--constrain`` mode it was generated with."""
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
            "constrain": constrain,
        }
        row.update({k: example[k] for k in task.extra_result_columns if k in example})
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
    warn_beyond_context(generator, todo, lengths)
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
        writer.write([row for c in answered for row in results_rows(task, c, generator.options.constrain)])
        done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(q_per_s=f"{done / (time.perf_counter() - start):.2f}")
    bar.close()
    return done, time.perf_counter() - start


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


def dataset_fingerprint(dataset_path: str, split: str) -> str:
    """A content hash of a saved split's data files: the same questions and prompts give the same fingerprint."""
    from llama_squad.files import fingerprint_files

    return fingerprint_files(sorted((Path(dataset_path) / split).glob("*.arrow")))


def load_examples(dataset_path: str, split: str, limit: int | None):
    """The split of a dataset written by create_dataset.py (the first ``limit`` rows), checked to be one (its question
    ids unique)."""
    from llama_squad.files import InputError
    from llama_squad.tasks import task_names
    from llama_squad.tasks.common import DATASET_COLUMNS, dataset_folder_problem, load_dataset_folder

    problem = dataset_folder_problem(dataset_path)
    if problem:
        raise InputError(problem)
    try:
        dataset = load_dataset_folder(dataset_path)
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
    if len(tasks) != 1 or not tasks <= set(task_names()):
        raise InputError(f"{dataset_path}: the {split} split must hold one known task, it holds {sorted(tasks)}")
    seen: set[str] = set()
    for qid in examples["id"]:  # results and scores are kept by id: a repeated one breaks resuming and scoring
        if qid in seen:
            raise InputError(
                f"{dataset_path}: the {split} split repeats the question id {qid!r}: ids must be unique (results are "
                "kept by id); rebuild the dataset with create_dataset.py"
            )
        seen.add(qid)
    if limit is not None:
        examples = examples.select(range(min(limit, len(examples))))
    return [dict(ex) for ex in examples]
