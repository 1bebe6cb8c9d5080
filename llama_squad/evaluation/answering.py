"""Asking a task's questions of a model: each turn's prompt rendered as in training (the chat template, the model's
pause tokens, ``--force_answer``'s prefix), its answer constrained as the task says (``--constrain``), the turns of a
batch of conversations run through the engine (:mod:`llama_squad.generation`)."""

import logging
from dataclasses import dataclass, field

from llama_squad.answers import parse_json_answer
from llama_squad.generation import GenerationOptions, Generator, ValueProbe
from llama_squad.tasks import get_task
from llama_squad.tokenization import tokenize_prompt

logger = logging.getLogger(__name__)

ANSWER_PREFIX = '{"answer": "'  # what --force_answer writes for the model before it answers


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
    last_prompt: tuple[list[int], str] | None = None  # the last turn's prompt ids and prefix, once asked
    no_answer_prob: float | None = None  # at the last answer's value, the probability of abstaining (None: not read)
    best_output: str | None = None  # where the last answer abstained: the best answer that does not abstain


def start_conversation(example: dict) -> Conversation:
    completion = example["completion"]
    return Conversation(
        example=example,
        messages=list(example["prompt"]),
        follow_ups=[m for m in completion if m["role"] == "user"],
        turns_left=sum(m["role"] == "assistant" for m in completion),
    )


class Answerer:
    """Answers conversations (dataset examples, or the chat's questions) with a :class:`Generator`, prompted as the
    model was trained."""

    def __init__(self, generator: Generator, pause=None):
        self.generator = generator
        self.pause = pause  # the model's pause tokens (llama_squad.pause.PauseTokens), placed as in training
        self.constrainer = None  # --constrain: built on first use (llama_squad.constrain.Constrainer)
        self.probing = None  # whether the tokenizer's bytes are known (the probes read them), found on first use

    @property
    def options(self) -> GenerationOptions:
        return self.generator.options

    @property
    def tokenizer(self):
        return self.generator.tokenizer

    def prompt_ids(self, messages: list[dict], last_turn: bool) -> tuple[list[int], str]:
        """The prompt ids of a turn, and the text prefilled for the model that belongs to its answer."""
        prefix = ANSWER_PREFIX if self.options.force_answer and last_turn else None
        written = prefix or ""
        if self.pause is not None and last_turn:  # the pauses: part of the prompt, never of the answer
            messages, pauses = self.pause.prompt_messages(messages)
            written = pauses + written
        return tokenize_prompt(self.tokenizer, messages, assistant_prefix=written or None), prefix or ""

    def grammars(self, batch: list[tuple[Conversation, list[int], str]], last: list[bool]) -> list | None:
        """The grammar that constrains each prompt's answer (None: free; only a last turn, ``last[i]``, is
        constrained), or None when ``--constrain none``."""
        if self.options.constrain == "none":
            return None
        from llama_squad.constrain import Constrainer

        if self.constrainer is None:
            self.constrainer = Constrainer(self.tokenizer, self.generator.stop_ids)
        grammars = []
        for (c, _, prefix), is_last in zip(batch, last, strict=True):
            spec = task_of(c).constraint_of(c.example, self.options.constrain) if is_last and task_of(c) else None
            grammars.append(None if spec is None else self.constrainer.grammar(spec, prefix))
        return grammars

    def probes(self, batch: list[tuple[Conversation, list[int], str]], last: list[bool], forbid: bool = False):
        """Where each last turn's answer value begins, what the engine reads there (the task's abstaining value, see
        :class:`llama_squad.generation.ValueProbe`; ``forbid``: and takes away), or None when nothing is read (beam
        search, a tokenizer whose token bytes are unknown)."""
        if self.options.num_beams > 1 or not self.can_probe():
            return None
        probes = []
        for (c, _, prefix), is_last in zip(batch, last, strict=True):
            spec = task_of(c).value_probe(c.example) if is_last and task_of(c) else None
            probes.append(None if spec is None else ValueProbe(spec[0], spec[1], prefix, forbid))
        return probes

    def can_probe(self) -> bool:
        if self.probing is None:
            from llama_squad.constrain.tokens import vocabulary_of

            try:
                vocabulary_of(self.tokenizer)
                self.probing = True
            except ValueError as e:
                logger.warning("no no-answer probabilities: %s", e)
                self.probing = False
        return self.probing

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
            last = [c.turns_left == 1 for c in active]
            outputs, cache = self.generator.generate(
                prompts, shared, self.grammars(batch, last), previous, keep, probes=self.probes(batch, last)
            )
            for (c, ids, prefix), completion in zip(batch, outputs, strict=True):
                text, n = completion.text, len(completion.tokens)
                text = prefix + text.rstrip() if prefix else text.strip()
                if c.turns_left == 1:
                    c.last_prompt, c.no_answer_prob = (ids, prefix), completion.value_prob
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
        if self.options.best_answers:
            self.answer_best(conversations)

    def answer_best(self, conversations: list[Conversation]) -> None:
        """For each conversation whose last answer abstained where its value was read: that turn decoded again with
        the abstaining continuation taken away at the value's first token (under ``--constrain extractive``: a span),
        into ``best_output``, so that a threshold can flip an abstention into an answer."""
        todo = []
        for c in conversations:
            spec = task_of(c).value_probe(c.example) if task_of(c) and c.last_prompt else None
            if spec and c.no_answer_prob is not None and parse_json_answer(c.outputs[-1], spec[0]).answer == spec[1]:
                todo.append(c)
        if not todo:
            return
        batch = [(c, *c.last_prompt) for c in todo]
        last = [True] * len(todo)
        shared = [c.shared if len(c.outputs) == 1 else 0 for c in todo]  # a multi-turn prompt shares no group prefix
        outputs, _ = self.generator.generate(
            [ids for _, ids, _ in batch], shared, self.grammars(batch, last), probes=self.probes(batch, last, True)
        )
        for (c, _, prefix), completion in zip(batch, outputs, strict=True):
            c.best_output = prefix + completion.text.rstrip() if prefix else completion.text.strip()


def task_of(conversation: Conversation):
    """The task of a conversation's example (None for the chat's questions, which name none)."""
    name = conversation.example.get("task")
    return get_task(name) if name else None


def load_answerer(
    model_args,
    options: GenerationOptions,
    *,
    adapter_path: str | None = None,
    merge_adapter: bool = True,
    seed: int = 42,
    device_map=None,
) -> Answerer:
    """The :class:`Answerer` of test.py and the chat: the model ``model_args`` (ModelLoadingArguments) name and say how
    to load, with the adapter at ``adapter_path`` (see :func:`llama_squad.models.load_for_inference`), prompted with
    the pause tokens it was trained with (pause_tokens.json beside it), if any; sampling seeded with ``seed``."""
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
    return Answerer(Generator(model, tokenizer, options), pause=pause)
