"""Learned pause tokens: N new special tokens the model reads before it answers, whose embeddings alone are trained.

The model gets N extra positions to compute before it writes its answer (Goyal et al. 2023, "Think before you
speak: Training Language Models With Pause Tokens"; the original llama-squad's best recipe). The tokens
``<|pause_0|>`` ... ``<|pause_{N-1}|>`` are added to the tokenizer as special tokens, the embedding matrix grows by
their rows (initialised to the mean of the existing rows), and only those rows are trained, beside the LoRA layers
(PEFT's ``trainable_token_indices``).

They are a property of the model, not of the data: train.py writes ``pause_tokens.json`` beside the adapter (and into
each checkpoint and the merged model), test.py reads it from the model it loads and prompts with the same tokens at
the same place. The dataset stays the same for every pause count.

Where they go (``position``):

- ``assistant``: the assistant turn opens with them, written for the model (never supervised, never generated):
  ``<generation prompt><|pause_0|>...<|pause_{N-1}|>{"answer": "..."}<end of turn>``.
- ``user``: they end the user message that asks for the JSON answer.
"""

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llama_squad.files import InputError, atomic_write_json, read_json

logger = logging.getLogger(__name__)

PAUSE_FILE = "pause_tokens.json"
POSITIONS = ("assistant", "user")  # assistant: they open the assistant turn; user: they end the user message
TOKEN_FORMAT = "<|pause_{}|>"


@dataclass(frozen=True)
class PauseTokens:
    """The pause tokens of a model and where its prompts hold them."""

    tokens: tuple[str, ...]
    position: str = "assistant"

    def __post_init__(self):
        if not self.tokens:
            raise ValueError("PauseTokens needs at least one token (no pause tokens: use None)")
        if self.position not in POSITIONS:
            raise ValueError(f"pause position {self.position!r}: choose one of {', '.join(POSITIONS)}")

    @classmethod
    def of(cls, count: int, position: str = "assistant") -> "PauseTokens | None":
        """``count`` pause tokens at ``position``; None for 0."""
        if count < 0:
            raise ValueError(f"pause token count {count}: give 0 (none) or more")
        return cls(tuple(TOKEN_FORMAT.format(k) for k in range(count)), position) if count else None

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def prompt_messages(self, messages: list[dict]) -> tuple[list[dict], str]:
        """The messages of the turn that asks for the answer, with the pauses in place, and the text the assistant
        turn opens with (the pauses, or "" when they end the user message). ``messages`` is left as it is."""
        if self.position == "assistant":
            return messages, self.text
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("pause tokens at the end of the user turn need a prompt that ends with a user message")
        return [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + self.text}], ""

    def training_messages(self, prompt: list[dict], completion: list[dict]) -> tuple[list[dict], list[dict], str]:
        """(prompt, completion, assistant prefix) of a training example: the pauses go before the last assistant
        message (the JSON answer), exactly as :meth:`prompt_messages` puts them at inference. The prefix opens that
        message's content; the tokenizer step leaves it unsupervised."""
        messages = [*prompt, *completion[:-1]]
        asked, prefix = self.prompt_messages(messages)
        last = completion[-1]
        if prefix:
            last = {**last, "content": prefix + last["content"]}
        return asked[: len(prompt)], [*asked[len(prompt) :], last], prefix

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "position": self.position}


def save(pause: "PauseTokens | None", folder: str | os.PathLike) -> None:
    """Write ``folder/pause_tokens.json`` (nothing without pause tokens)."""
    if pause is not None:
        atomic_write_json(Path(folder) / PAUSE_FILE, pause.to_json())


def load(folder: str | os.PathLike | None) -> "PauseTokens | None":
    """The pause tokens recorded in ``folder/pause_tokens.json``, or None when there is no such file."""
    if folder is None or not (Path(folder) / PAUSE_FILE).is_file():
        return None
    path = Path(folder) / PAUSE_FILE
    record = read_json(path)
    tokens = record.get("tokens") if isinstance(record, dict) else None
    position = record.get("position", "assistant") if isinstance(record, dict) else None
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
        raise InputError(f"{path}: expected {{'tokens': [non-empty strings], 'position': ...}}; re-run train.py")
    if position not in POSITIONS:
        raise InputError(f"{path}: position {position!r}: expected one of {', '.join(POSITIONS)}; re-run train.py")
    return PauseTokens(tuple(tokens), position)


def check_file(model_dir: str | os.PathLike | None) -> None:
    """Read the ``pause_tokens.json`` of a local model or adapter folder, if it has one, so that a broken one fails
    before the model loads (a Hub id is checked once its files are in the cache, by :func:`for_model`)."""
    if model_dir is not None and Path(model_dir).is_dir():
        load(model_dir)


def find_in_tokenizer(tokenizer) -> list[str]:
    """The pause tokens a tokenizer holds (added tokens named like ``<|pause_0|>``), in id order."""
    pattern = re.compile(re.escape(TOKEN_FORMAT).replace(r"\{\}", r"\d+"))
    return [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items()) if pattern.fullmatch(t.content)]


def check_tokenizer(pause: "PauseTokens | None", tokenizer, where: str) -> None:
    """Refuse a model whose tokenizer and ``pause_tokens.json`` disagree: it would be prompted otherwise than it was
    trained. ``where`` names the folder."""
    found = find_in_tokenizer(tokenizer)
    wanted = list(pause.tokens) if pause else []
    if found != wanted:
        raise InputError(
            f"{where}: its tokenizer holds the pause tokens {found or 'none'} but {PAUSE_FILE} names "
            f"{wanted or 'none'}: the model cannot be prompted as it was trained; use train.py's output folder "
            "(or its merged/ folder) whole"
        )
    for token in wanted:
        if len(tokenizer(token, add_special_tokens=False)["input_ids"]) != 1:
            raise InputError(f"{where}: the pause token {token!r} is not one token of its tokenizer; re-run train.py")


def add_to_tokenizer(tokenizer, pause: PauseTokens) -> list[int]:
    """Add the pause tokens to ``tokenizer`` as special tokens (kept whole, left out of decoded text); their ids.

    Tokens it already holds as added tokens (a tokenizer saved by train.py) are reused; a pause token that is an
    ordinary word of the vocabulary is refused.
    """
    from tokenizers import AddedToken

    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    vocab = tokenizer.get_vocab()
    clash = [t for t in pause.tokens if t in vocab and t not in added]
    if clash:
        raise ValueError(f"{tokenizer.name_or_path}: the pause tokens {clash} are already words of its vocabulary")
    new = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for t in pause.tokens
        if t not in added
    ]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(list(pause.tokens))


def grow_embeddings(model, size: int) -> int:
    """Give ``model`` at least ``size`` token rows (the tokenizer's length); returns how many rows were added.

    The new rows of the input embedding, and of the output layer when it is not tied to it, are the mean of the
    existing rows: the same values at every load of the same base model, so that an adapter trained on them (whose
    trainable tokens replace the input rows, and the tied output rows) meets the same model at test time.
    """
    import torch

    from llama_squad.distributed import gathered

    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    tied = output is None or output.weight is embeddings.weight
    # under DeepSpeed ZeRO-3 each process holds a slice of the weights, read as empty: gather them whole
    with gathered([embeddings.weight] + ([] if tied else [output.weight])):
        old = embeddings.weight.shape[0]
        if size <= old:
            return 0
        means = [embeddings.weight.detach().float().mean(0)]
        if not tied:
            means.append(output.weight.detach().float().mean(0))
    model.resize_token_embeddings(size, mean_resizing=False)
    layers = [model.get_input_embeddings()] + ([] if tied else [model.get_output_embeddings()])
    with gathered([layer.weight for layer in layers], modifier_rank=0), torch.no_grad():
        for layer, mean in zip(layers, means, strict=True):
            layer.weight[old:] = mean.to(layer.weight.dtype)
    logger.info("grew the embeddings from %d to %d rows (new rows: the mean of the others)", old, size)
    return size - old


def prepare_model(model, tokenizer, pause: PauseTokens) -> list[int]:
    """Before training: add the pause tokens to ``tokenizer``, give ``model`` their rows, and start each input row at
    the mean of the rows before the first pause token (where a model has spare rows, such as Qwen2.5's, those
    rows are not the mean). Returns their ids, for ``LoraConfig(trainable_token_indices=...)``."""
    import torch

    from llama_squad.distributed import gathered

    ids = add_to_tokenizer(tokenizer, pause)
    grow_embeddings(model, len(tokenizer))
    weight = model.get_input_embeddings().weight
    with gathered([weight], modifier_rank=0), torch.no_grad():
        weight[ids] = weight[: min(ids)].float().mean(0).to(weight.dtype)
    logger.info("pause tokens %s (ids %s) at the %s turn", list(pause.tokens), ids, pause.position)
    return ids


def for_model(model_dir: str | os.PathLike, tokenizer, revision: str | None = None) -> "PauseTokens | None":
    """The pause tokens the model at ``model_dir`` was trained with (an adapter folder, a merged model's folder, or a
    Hub id, at ``revision``, whose files are in the local cache), checked against its ``tokenizer``; None for a model
    without."""
    folder: Path | None = Path(model_dir)
    if not folder.is_dir():  # a Hub id: the file beside the model's other files in the local cache, if it has one
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model_dir), PAUSE_FILE, revision=revision)
        folder = Path(cached).parent if isinstance(cached, str) else None
    pause = load(folder)
    check_tokenizer(pause, tokenizer, str(model_dir))
    if pause is not None:
        logger.info("prompting with %d pause tokens at the %s turn (%s)", len(pause.tokens), pause.position, model_dir)
    return pause
