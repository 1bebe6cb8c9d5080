"""The decoding engine: prompts as token ids (each with an optional grammar) in, the tokens that continue them and
their scores out; shared prompt prefixes are computed once, and a conversation's next turn starts from the cache its
last turn left. It knows nothing of tasks, results or metrics (:mod:`llama_squad.evaluation` asks it)."""

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from llama_squad.tokenization import end_of_turn_token_id

CONSTRAIN_MODES = ("none", "json", "extractive")  # --constrain (llama_squad.constrain builds their grammars)


@dataclass
class GenerationOptions:
    """How to decode: greedy by default, or beam search / sampling."""

    max_new_tokens: int = field(
        default=64,
        metadata={"help": "The most tokens the model writes for an answer (each turn of a multi-turn prompt)."},
    )
    num_beams: int = field(
        default=1, metadata={"help": "1: greedy (or sampling, with --do_sample); more: beam search."}
    )
    do_sample: bool = field(
        default=False, metadata={"help": "Sample the tokens (see --temperature, --top_p, --top_k) instead of greedy."}
    )
    temperature: float = field(default=1.0, metadata={"help": "With --do_sample: the sampling temperature (> 0)."})
    top_p: float = field(
        default=1.0, metadata={"help": "With --do_sample: nucleus sampling's probability mass, (0, 1]."}
    )
    top_k: int = field(
        default=50, metadata={"help": "With --do_sample: sample among the k likeliest tokens (0: all)."}
    )
    force_answer: bool = field(
        default=False,
        metadata={
            "help": 'Write {"answer": " for the model, which then writes only the value (an untuned model answers '
            "in JSON too)."
        },
    )
    share_prefix: bool = field(
        default=True,
        metadata={"help": "Compute the prompt prefix a group of questions shares once (greedy and sampling)."},
    )
    constrain: str = field(
        default="none",
        metadata={
            "help": "What the model may write: none (anything); json (one JSON object of the task's form); "
            "extractive (also every value a span of the context or dialogue, or a fixed choice: ?, dontcare, a "
            "categorical slot's values).",
            "choices": CONSTRAIN_MODES,
        },
    )
    best_answers: bool = field(
        default=False,
        metadata={
            "help": 'Where the answer abstains ("?"), also decode the best answer that does not (the abstaining '
            "continuation taken away at the value's first token), so that a no-answer threshold can turn an "
            "abstention into an answer."
        },
    )

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
class Completion:
    """What the model wrote after one prompt: its tokens up to and including the end-of-turn token (or as many as
    --max_new_tokens allowed), their text (special tokens left out), and, when asked, each token's log-probability
    under the scores it was chosen from."""

    tokens: list[int]
    text: str
    scores: list[float] | None = None
    value_prob: float | None = None  # with a ValueProbe: the probability it read (None: the value was not reached)


@dataclass(frozen=True)
class ValueProbe:
    """What to read where a JSON answer's value begins: the first position at which the text written so far (the
    ``written`` text the prompt prefilled, then the generated tokens) ends with ``{"<key>": "`` (spaces free). There
    the engine records the probability of the tokens that begin the continuation ``"<value>"`` (those whose bytes are
    a beginning of ``<value>"`` or begin with it), under the scores the token is chosen from (after ``--constrain``'s
    mask: the mass among the tokens the grammar allows). With ``forbid`` it also takes those tokens away from the
    choice there (the best answer that is not that value)."""

    key: str = "answer"
    value: str = "?"
    written: str = ""
    forbid: bool = False


class ValueProbeProcessor:
    """A logits processor that reads each row's :class:`ValueProbe` (greedy and sampling: one row per prompt)."""

    def __init__(self, probes: list, tokenizer):
        import re

        from llama_squad.constrain.tokens import vocabulary_of

        self.probes = probes
        self.bytes_of = vocabulary_of(tokenizer).bytes_of
        self.width: int | None = None
        self.written = [p.written.encode("utf-8") if p else b"" for p in probes]
        self.prob: list[float | None] = [None] * len(probes)
        self.done = [p is None for p in probes]
        self.opening = {
            p.key: re.compile(rb'\{\s*"' + re.escape(p.key.encode()) + rb'"\s*:\s*"$') for p in probes if p
        }
        self.tokens: dict[str, torch.Tensor] = {}

    def _continuation_ids(self, value: str, size: int) -> torch.Tensor:
        target = value.encode("utf-8") + b'"'
        if value not in self.tokens:
            ids = [i for i, b in enumerate(self.bytes_of) if b and (target.startswith(b) or b.startswith(target))]
            self.tokens[value] = torch.tensor(ids, dtype=torch.long)
        return self.tokens[value][self.tokens[value] < size]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.width is None:
            self.width = input_ids.shape[1]
        elif input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for row, token in enumerate(last):
                if not self.done[row] and token < len(self.bytes_of):
                    self.written[row] = (self.written[row] + (self.bytes_of[token] or b""))[-256:]
        for row, probe in enumerate(self.probes):
            if self.done[row] or not self.opening[probe.key].search(self.written[row]):
                continue
            self.done[row] = True
            ids = self._continuation_ids(probe.value, scores.shape[1]).to(scores.device)
            probs = torch.softmax(scores[row].float(), dim=-1)
            self.prob[row] = float(probs[ids].sum())
            if probe.forbid and float(probs[ids].sum()) < 1.0 - 1e-12:  # something else is allowed there
                scores[row, ids] = float("-inf")
        return scores


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


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    import numpy as np

    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


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
    """Continues token-id prompts with a model, in batches, stopping at the end-of-turn token (the engine: see the
    module docstring)."""

    def __init__(self, model, tokenizer, options: GenerationOptions, synced: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.synced = synced  # a model sharded across processes (FSDP, ZeRO-3): every process in every forward pass
        stop = [end_of_turn_token_id(tokenizer)]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
            stop.append(tokenizer.eos_token_id)
        self.stop_ids = stop
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
        self.streamer = None  # a transformers streamer (TextIteratorStreamer) fed by every generate call, if set

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        prefix_lengths: list[int] | None = None,
        grammars: list | None = None,
        previous: TurnCache | None = None,
        keep_cache: bool = False,
        with_scores: bool = False,
        probes: list | None = None,
    ) -> tuple[list[Completion], TurnCache | None]:
        """The :class:`Completion` of each prompt (its tokens up to the end-of-turn token), and, with ``keep_cache``,
        the cache the batch leaves (for the next turn of the same conversations). ``with_scores``: each token's
        log-probability too (greedy and sampling). ``probes[i]``: a :class:`ValueProbe` for prompt ``i`` (None: none;
        greedy and sampling), read into its completion's ``value_prob``.

        ``prefix_lengths[i]``: how many first tokens prompt ``i`` shares with the other prompts of its group (rows with
        the same first tokens). Each distinct prefix then goes through the model once, and its keys and values are
        handed to every row that starts with it (``shared_prefix_cache``); without them every row is run whole.
        ``grammars[i]`` (``--constrain``, :class:`llama_squad.constrain.Grammar`): what the answer of prompt ``i`` may
        be (None: anything).
        ``previous``: the cache of the previous turn of these rows, whose prompts extend it: only the new tokens run.
        """
        from llama_squad.kv_cache import make_room, preallocated_cache

        kwargs = self.options.generate_kwargs(self.stop_ids, self.pad_id)
        if self.synced:  # the processes that finish first keep feeding the model until all have
            kwargs["synced_gpus"] = True
        prefixes = None
        if previous is None and prefix_lengths is not None and self.options.shares_prefixes and min(prefix_lengths):
            prefixes = [tuple(p[:n]) for p, n in zip(prompts, prefix_lengths, strict=True)]
            if any(len(prefix) >= len(p) for prefix, p in zip(prefixes, prompts, strict=True)):
                prefixes = None  # every row must keep one token of its own to feed
        if self.streamer is not None:
            kwargs["streamer"] = self.streamer
        processors = []
        if grammars is not None and any(g is not None for g in grammars):  # --constrain
            from llama_squad.constrain import ConstrainedLogitsProcessor

            processors.append(
                ConstrainedLogitsProcessor(grammars, self.options.num_beams, self.options.max_new_tokens)
            )
        probe = None
        if probes is not None and any(p is not None for p in probes) and self.options.num_beams == 1:
            probe = ValueProbeProcessor(probes, self.tokenizer)  # after the grammar: it reads what the grammar allows
            processors.append(probe)
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
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
        with_scores = with_scores and self.options.num_beams == 1
        as_dict = keep_cache or with_scores
        with grouped_query_attention_on_cpu(device):
            out = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                return_dict_in_generate=as_dict,
                output_scores=with_scores,
                **kwargs,
            )
        sequences = out.sequences if as_dict else out
        width = input_ids.shape[1]
        completions = []
        for row, tokens in enumerate(sequences[:, width:].tolist()):
            n = len(tokens)
            for i, token in enumerate(tokens):
                if token in self.stop_ids:
                    n = i + 1
                    break
            text = self.tokenizer.decode(tokens[:n], skip_special_tokens=True)
            scores = None
            if with_scores:  # the processed scores of each step (after --constrain's mask), as log-probabilities
                scores = [
                    float(torch.log_softmax(out.scores[i][row].float(), -1)[t]) for i, t in enumerate(tokens[:n])
                ]
            completions.append(Completion(tokens[:n], text, scores, probe.prob[row] if probe else None))
        if not keep_cache:
            return completions, None
        return completions, self.turn_cache(out, attention_mask, [len(c.tokens) for c in completions])

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
