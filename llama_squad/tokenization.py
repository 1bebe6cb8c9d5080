"""Chat messages → input ids and answer-only labels (with the end-of-turn token), for any chat template.

One module of ~480 lines on purpose: the four steps below share one private cache per tokenizer (the skeletons) and
each step reads the one before it; apart, none of them is of use.

How the answer is found, without token ids or model names:

1. The chat template renders the conversation once with every message content replaced by a marker
   (``\\ue000<index>\\ue001``). What is left between the markers is the template's scaffolding: the generation prompt,
   the text the assistant writes before its content (Llama-2's ``" "``) and after it, up to the first special token,
   which is the end-of-turn token (``<|im_end|>``, ``</s>``, ``<|eot_id|>``, ``<|end|>``...). These skeletons depend
   only on the roles, so they are cached per tokenizer.
2. Each example is rendered for real (``apply_chat_template(tokenize=False)``) and walked against its skeleton, which
   gives the exact character span of every message content (whitespace trimmed by the template included).
3. The training text is the inference prompt, ``apply_chat_template(prompt, add_generation_prompt=True)``, followed by
   what the model must write after it: ``lead + content + text up to and including the end-of-turn token``. It is
   never the rendering of prompt + answer, which differs from the inference prompt on some templates (Mistral v0.3
   drops the system message, Phi-3 appends ``<|endoftext|>``).
4. The prompt is tokenized alone; the answer ids are the ids that follow it in the tokenized training text. Where a
   token merges across the boundary (a ChatML answer starting with a newline), the answer is tokenized on its own
   after a special token instead, so the ids still start with exactly the inference prompt's ids.

Multi-turn: the training text is the last turn's inference prompt plus the last answer; the earlier assistant turns
sit inside that prompt and their tokens (from the assistant's lead to the end-of-turn token) are supervised too.

An assistant prefix (pause tokens, ``llama_squad.pause``) opens the last answer, written for the model at inference:
its ids must be exactly those ``tokenize_prompt(..., assistant_prefix=...)`` gives, and they are not supervised.
"""

import logging
import re
import weakref
from dataclasses import dataclass, field

from llama_squad import IGNORE_INDEX

logger = logging.getLogger(__name__)

_MARKER = "\ue000{}\ue001"  # private-use characters: no template or tokenizer gives them a meaning
_MARKER_RE = re.compile("\ue000(\\d+)\ue001")

# How a message is rendered: as a prompt with the generation prompt, as a finished chat, or with the last
# (assistant) message left open for the model to continue.
_GENERATION = "generation"
_CLOSED = "closed"
_CONTINUE = "continue"
_MODES = {
    _GENERATION: {"add_generation_prompt": True},
    _CLOSED: {"add_generation_prompt": False},
    _CONTINUE: {"add_generation_prompt": False, "continue_final_message": True},
}


@dataclass(frozen=True)
class _Skeleton:
    """A template's rendering with every content replaced by a marker: ``pieces[k]`` precedes message ``order[k]``."""

    pieces: tuple[str, ...]  # one more than order: the text after the last content ends it
    order: tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    """Where the supervised text of a conversation shape (its roles) lies in the template's scaffolding."""

    prompt: _Skeleton  # the last turn's inference prompt: roles[:-1] with the generation prompt
    closed: _Skeleton  # the whole conversation, finished
    lead: str  # what the assistant writes before its content, after the generation prompt (Llama-2, Mistral: " ")
    trail: str  # what it writes after its content, up to and including the end-of-turn token
    eot_id: int
    earlier: tuple[tuple[int, str, int], ...]  # (message index, lead, chars after the content to the end-of-turn end)


@dataclass
class _TemplateState:
    """Per-tokenizer caches, valid for one chat template and one set of special and added tokens (``key``)."""

    key: tuple
    special_re: re.Pattern
    stripping: dict[int, str]  # added tokens that strip whitespace beside them: id -> the text the token stands for
    skeletons: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)
    anchor: tuple[str, int] | None = None


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _state(tokenizer) -> _TemplateState:
    """The tokenizer's caches, rebuilt when its chat template or its tokens change.

    The key holds what the cached values derive from: the template, the special tokens (the template reads the named
    ones; ``add_special_tokens`` registers new ones) and the vocabulary size (``add_tokens``), so that registering the
    end-of-turn token as special takes effect at once. It costs microseconds, once per batch. Not seen: a token of the
    vocabulary made special by ``add_tokens`` alone (neither a new id nor a registered special token).
    """
    template = tokenizer.chat_template
    if not template:
        raise ValueError(f"{_name(tokenizer)}: the tokenizer has no chat template; set tokenizer.chat_template")
    key = (template, tuple(tokenizer.special_tokens_map.items()), tuple(tokenizer.all_special_tokens), len(tokenizer))
    state = _STATES.get(tokenizer)
    if state is None or state.key != key:
        added = tokenizer.added_tokens_decoder
        special = {t.content for t in added.values() if t.special}
        special.update(tokenizer.all_special_tokens)
        special.discard("")
        pattern = "|".join(re.escape(s) for s in sorted(special, key=len, reverse=True))
        stripping = {i: t.content for i, t in added.items() if (t.lstrip or t.rstrip) and t.content}
        state = _TemplateState(key=key, special_re=re.compile(pattern or "(?!)"), stripping=stripping)
        state.anchor = _find_anchor(tokenizer)
        _STATES[tokenizer] = state
    return state


def _find_anchor(tokenizer) -> tuple[str, int] | None:
    """A special token that leaves the text after it alone (no whitespace stripping), to tokenize a continuation."""
    for token_id, token in sorted(tokenizer.added_tokens_decoder.items()):
        if token.special and not token.rstrip and not token.lstrip and token.content:
            ids = tokenizer(token.content + "a", add_special_tokens=False)["input_ids"]
            if ids and ids[0] == token_id:
                return token.content, token_id
    return None


def _render(tokenizer, messages: list[dict], mode: str) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **_MODES[mode])


def _skeleton(tokenizer, state: _TemplateState, roles: tuple[str, ...], mode: str) -> _Skeleton:
    key = (roles, mode)
    if key not in state.skeletons:
        messages = [{"role": role, "content": _MARKER.format(i)} for i, role in enumerate(roles)]
        parts = _MARKER_RE.split(_render(tokenizer, messages, mode))
        state.skeletons[key] = _Skeleton(pieces=tuple(parts[0::2]), order=tuple(int(i) for i in parts[1::2]))
    return state.skeletons[key]


def _end_of_turn(tokenizer, state: _TemplateState, after: str, where: str) -> re.Match:
    """The first special token in ``after``, the scaffolding that follows an assistant content."""
    match = state.special_re.search(after)
    if match is None:
        raise ValueError(
            f"{_name(tokenizer)}: its chat template ends {where} with {after!r}, which holds no special token, so "
            "there is no end-of-turn token to train the model to stop on. Use a chat template whose assistant turns "
            "end with a special token (set tokenizer.chat_template), or register that token as a special token "
            "(tokenizer.add_special_tokens)."
        )
    return match


def _layout(tokenizer, state: _TemplateState, roles: tuple[str, ...], first_target: int) -> _Layout:
    """The layout of a conversation whose assistant messages from index ``first_target`` on are supervised."""
    key = (roles, first_target)
    if key in state.layouts:
        return state.layouts[key]
    name, last = _name(tokenizer), len(roles) - 1
    prompt = _skeleton(tokenizer, state, roles[:-1], _GENERATION)
    closed = _skeleton(tokenizer, state, roles, _CLOSED)
    if closed.order.count(last) != 1 or closed.order[-1] != last or prompt.order[-1:] != (last - 1,):
        raise ValueError(
            f"{name}: cannot find the final assistant turn in the chat template's rendering of roles {list(roles)} "
            f"(message order {closed.order}); the template must render the last user message, then the assistant's."
        )
    before, after = closed.pieces[-2], closed.pieces[-1]
    generation_prompt = prompt.pieces[-1]
    if before.startswith(generation_prompt):
        lead = before[len(generation_prompt) :]
    else:  # the generation prompt holds text a finished turn lacks (an empty thinking block): the model sees it all
        lead = ""
        logger.warning(
            "%s: the generation prompt %r is not how the template opens a finished assistant turn (%r); training on "
            "the answer right after the generation prompt",
            name,
            generation_prompt,
            before,
        )
    eot = _end_of_turn(tokenizer, state, after, "an assistant turn")
    earlier = []
    for index in range(first_target, last):
        if roles[index] != "assistant":
            continue
        if prompt.order.count(index) != 1:
            raise ValueError(
                f"{name}: the chat template renders assistant message {index} {prompt.order.count(index)} times"
            )
        k = prompt.order.index(index)
        match = _end_of_turn(tokenizer, state, prompt.pieces[k + 1], f"assistant message {index}")
        if match.group() != eot.group():
            raise ValueError(
                f"{name}: the chat template ends assistant message {index} with {match.group()!r} but the last one "
                f"with {eot.group()!r}; cannot tell which token ends a turn"
            )
        turn_lead = lead if prompt.pieces[k].endswith(lead) else ""
        earlier.append((index, turn_lead, match.end()))
    layout = _Layout(
        prompt=prompt,
        closed=closed,
        lead=lead,
        trail=after[: eot.end()],
        eot_id=tokenizer.convert_tokens_to_ids(eot.group()),
        earlier=tuple(earlier),
    )
    state.layouts[key] = layout
    return layout


def _renderings(content: str) -> list[str]:
    """The ways a template may print a content: as is, or with surrounding whitespace trimmed."""
    out = [content]
    for variant in (content.strip(), content.lstrip(), content.rstrip()):
        if variant not in out:
            out.append(variant)
    return out


def _locate(tokenizer, text: str, skeleton: _Skeleton, contents: list[str]) -> dict[int, tuple[int, int]]:
    """Character span of each message content in ``text``, a real rendering of the conversation ``skeleton`` has."""
    spans: dict[int, tuple[int, int]] = {}
    pieces, pos = skeleton.pieces, len(skeleton.pieces[0])
    ok = text.startswith(pieces[0])
    for k, index in enumerate(skeleton.order if ok else ()):
        after = pieces[k + 1]
        last = k + 1 == len(skeleton.order)
        for candidate in _renderings(contents[index]):  # the one the scaffolding that follows confirms
            end = pos + len(candidate)
            if (
                text.startswith(candidate, pos)
                and text.startswith(after, end)
                and (not last or end + len(after) == len(text))
            ):
                spans[index] = (pos, end)
                pos = end + len(after)
                break
        else:
            ok = False
            break
    if not ok or pos != len(text):
        raise ValueError(
            f"{_name(tokenizer)}: the chat template's rendering does not match its scaffolding with the contents put "
            "back (it changes message contents beyond trimming whitespace), so the answer cannot be located in it: "
            f"{text if len(text) <= 400 else text[:200] + ' ... ' + text[-200:]!r}"
        )
    return spans


def _check_messages(prompt: list[dict], completion: list[dict]) -> tuple[str, ...]:
    for what, messages in (("prompt", prompt), ("completion", completion)):
        if not isinstance(messages, list | tuple) or not messages:
            raise ValueError(f"{what} must be a non-empty list of messages, got {messages!r}")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
                raise ValueError(
                    f"each {what} message needs a 'role' and a string 'content'; got {message!r}"
                    + (f" (keys {sorted(message)})" if isinstance(message, dict) else "")
                )
    roles = tuple(m["role"] for m in prompt) + tuple(m["role"] for m in completion)
    if completion[-1]["role"] != "assistant" or prompt[-1]["role"] != "user":
        raise ValueError(
            "the prompt must end with a user message and the completion with an assistant message; got roles "
            f"{[m['role'] for m in prompt]} + {[m['role'] for m in completion]}"
        )
    return roles


@dataclass(frozen=True)
class _Rendered:
    """An example as text: the inference prompt, what the model writes after it, and the supervised spans inside it."""

    prompt: str
    answer: str
    spans: tuple[tuple[int, int], ...]  # supervised character spans of earlier assistant turns inside ``prompt``
    eot_id: int


def _render_example(tokenizer, state: _TemplateState, prompt: list[dict], completion: list[dict]) -> _Rendered:
    layout = _layout(tokenizer, state, _check_messages(prompt, completion), first_target=len(prompt))
    messages = [*prompt, *completion]
    contents = [m["content"] for m in messages]
    prompt_text = _render(tokenizer, messages[:-1], _GENERATION)
    closed_text = _render(tokenizer, messages, _CLOSED)
    start, end = _locate(tokenizer, closed_text, layout.closed, contents)[len(messages) - 1]
    answer = layout.lead + closed_text[start:end] + layout.trail
    spans = []
    if layout.earlier:
        located = _locate(tokenizer, prompt_text, layout.prompt, contents)
        for index, lead, tail in layout.earlier:
            start, end = located[index]
            spans.append((start - len(lead), end + tail))
    return _Rendered(prompt=prompt_text, answer=answer, spans=tuple(spans), eot_id=layout.eot_id)


def _encode(tokenizer, texts: list[str], offsets: bool = False) -> dict:
    return tokenizer(
        texts, add_special_tokens=False, return_offsets_mapping=offsets, return_attention_mask=False, verbose=False
    )


def _continuation(
    tokenizer, state: _TemplateState, prompt_ids: list[int], full_ids: list[int], text: str
) -> list[int]:
    """The ids of ``text`` after the prompt: as the tokenized prompt + text has them when the prompt's ids are intact,
    else (a token merged across the boundary) ``text`` tokenized after a special token, as a continuation."""
    n = len(prompt_ids)
    if full_ids[:n] == prompt_ids:
        return full_ids[n:]
    anchor = state.anchor
    if anchor is None:
        return _encode(tokenizer, [text])["input_ids"][0]
    ids = _encode(tokenizer, [anchor[0] + text])["input_ids"][0]
    if ids[:1] != [anchor[1]]:
        raise ValueError(f"{_name(tokenizer)}: {anchor[0]!r} + text does not tokenize to {anchor[0]!r} first")
    return ids[1:]


def _assemble(
    tokenizer,
    state: _TemplateState,
    rendered: _Rendered,
    prompt_enc: tuple,
    full_ids: list[int],
    max_length: int | None,
    prefilled: list[int] | None = None,
):
    prompt_ids, offsets = prompt_enc
    answer_ids = _continuation(tokenizer, state, prompt_ids, full_ids, rendered.answer)
    input_ids = prompt_ids + answer_ids
    if max_length is not None and len(input_ids) > max_length:
        return None
    labels = [IGNORE_INDEX] * len(prompt_ids)
    written = 0  # answer ids written for the model (an assistant prefix): in the inference prompt, not supervised
    if prefilled is not None:
        written = len(prefilled) - len(prompt_ids)
        if prefilled[: len(prompt_ids)] != prompt_ids or answer_ids[:written] != prefilled[len(prompt_ids) :]:
            raise ValueError(
                f"{_name(tokenizer)}: the assistant prefix tokenizes to {prefilled[len(prompt_ids) :]} in the "
                f"inference prompt but the training text {rendered.answer!r} starts with {answer_ids[:written]}: "
                "the prefix must end where a token ends (end it with a special token)"
            )
    for start, end in rendered.spans:  # an earlier turn: supervise the tokens whose text overlaps its span
        last = None
        for i, (a, b) in enumerate(offsets):
            # An added token that strips whitespace has it in its offsets (Phi-3's <|assistant|> swallows the "\n"
            # and the content's leading spaces after it) but stands for its content alone: a header is not the turn.
            content = state.stripping.get(prompt_ids[i])
            if content is not None and (k := rendered.prompt.find(content, a, b)) >= 0:
                a, b = k, k + len(content)
            if (a < end and b > start) or (a == b and start <= a < end):
                labels[i] = prompt_ids[i]
                last = i
        if last is None or prompt_ids[last] != rendered.eot_id:
            raise ValueError(
                f"{_name(tokenizer)}: an earlier assistant turn ({rendered.prompt[start:end]!r}) does not end "
                f"with the end-of-turn token {rendered.eot_id} once tokenized"
            )
    labels += [IGNORE_INDEX] * written + answer_ids[written:]
    if len(answer_ids) <= written or answer_ids[-1] != rendered.eot_id:
        raise ValueError(
            f"{_name(tokenizer)}: the answer {rendered.answer!r} tokenizes to {answer_ids}, which does not end with "
            f"the end-of-turn token {rendered.eot_id}"
        )
    return {"input_ids": input_ids, "labels": labels}


def _tokenize_many(
    tokenizer, examples: list[tuple[list[dict], list[dict]]], max_length: int | None, prefixes: list[str] | None = None
) -> list:
    """``prefixes[i]``: the text example ``i``'s last answer opens with, prefilled at inference ("": none)."""
    state = _state(tokenizer)
    rendered = [_render_example(tokenizer, state, prompt, completion) for prompt, completion in examples]
    prompts = _encode(tokenizer, [r.prompt for r in rendered], offsets=True)
    fulls = _encode(tokenizer, [r.prompt + r.answer for r in rendered])["input_ids"]
    prefilled = [
        tokenize_prompt(tokenizer, [*prompt, *completion[:-1]], assistant_prefix=prefix) if prefix else None
        for (prompt, completion), prefix in zip(examples, prefixes or [""] * len(examples), strict=True)
    ]
    return [
        _assemble(tokenizer, state, r, (ids, offsets), full, max_length, prefill)
        for r, ids, offsets, full, prefill in zip(
            rendered, prompts["input_ids"], prompts["offset_mapping"], fulls, prefilled, strict=True
        )
    ]


def tokenize_conversation(
    tokenizer,
    prompt: list[dict],
    completion: list[dict],
    max_length: int | None = None,
    assistant_prefix: str | None = None,
) -> dict | None:
    """Input ids and labels of one example; labels are IGNORE_INDEX except on the assistant turns of ``completion``.

    ``input_ids`` starts with exactly ``tokenize_prompt(tokenizer, prompt + completion[:-1])`` (the last turn's
    inference prompt) and ends with the last answer's end-of-turn token. Returns None when it is longer than
    ``max_length``: the caller drops and counts it (truncating would cut the end-of-turn token).

    ``assistant_prefix``: the last assistant content starts with this text, which inference writes for the model
    (``tokenize_prompt(..., assistant_prefix=...)``, e.g. pause tokens): its ids are checked to be exactly those of
    that inference prompt, and are not supervised.
    """
    if assistant_prefix and not completion[-1].get("content", "").startswith(assistant_prefix):
        raise ValueError(f"the last assistant message does not start with its assistant prefix {assistant_prefix!r}")
    return _tokenize_many(tokenizer, [(prompt, completion)], max_length, [assistant_prefix or ""])[0]


def tokenize_prompt(tokenizer, messages: list[dict], assistant_prefix: str | None = None) -> list[int]:
    """The inference prompt ids of ``messages`` (generation prompt added, no second BOS).

    With ``assistant_prefix`` (e.g. ``'{"answer": "'``) the assistant turn is opened and prefilled with it, as
    ``continue_final_message=True`` renders it, but after this same inference prompt (Mistral v0.3 would otherwise drop
    the system message). Its ids equal the start of the supervised ids of an answer that begins with the prefix when
    the text after the prefix starts with a letter or a digit (``{"answer": "France"}``, on all six shared
    templates). They differ where the tokenizer merges the prefix's closing ``' "'`` with what follows: a span that
    starts with punctuation (``"(1066)"``, ``"$5"``, ``"'s"``: one token ``' "('`` in training, ``' "'`` then ``'('``
    after the prefix), and on Llama-3 and Qwen2.5 also the no-answer ``{"answer": "?"}``, trained as ``' "?"'``.
    """
    prompt_text = _render(tokenizer, messages, _GENERATION)
    if not assistant_prefix:
        return _encode(tokenizer, [prompt_text])["input_ids"][0]
    state = _state(tokenizer)
    roles = tuple(m["role"] for m in messages) + ("assistant",)
    layout = _layout(tokenizer, state, roles, first_target=len(roles) - 1)
    opened = [*messages, {"role": "assistant", "content": assistant_prefix}]
    skeleton = _skeleton(tokenizer, state, roles, _CONTINUE)
    opened_text = _render(tokenizer, opened, _CONTINUE)
    start, end = _locate(tokenizer, opened_text, skeleton, [m["content"] for m in opened])[len(opened) - 1]
    prefix = layout.lead + opened_text[start:end]
    prompt_ids, full_ids = _encode(tokenizer, [prompt_text, prompt_text + prefix])["input_ids"]
    return prompt_ids + _continuation(tokenizer, state, prompt_ids, full_ids, prefix)


def end_of_turn_token_id(tokenizer) -> int:
    """The token that ends an assistant turn in this tokenizer's chat template: the stop token for generation.

    Found by a probe rendering (user, assistant): the first special token after the assistant's content.
    """
    return _layout(tokenizer, _state(tokenizer), ("user", "assistant"), first_target=1).eot_id


def _tokenize_batch(batch: dict, tokenizer, max_length: int | None, pause=None) -> dict:
    examples = list(zip(batch["prompt"], batch["completion"], strict=True))
    prefixes = None
    if pause is not None:  # the pause tokens where inference puts them (llama_squad.pause)
        placed = [pause.training_messages(prompt, completion) for prompt, completion in examples]
        examples = [(prompt, completion) for prompt, completion, _ in placed]
        prefixes = [prefix for _, _, prefix in placed]
    rows = _tokenize_many(tokenizer, examples, max_length, prefixes)
    kept = [row for row in rows if row is not None]
    return {"input_ids": [row["input_ids"] for row in kept], "labels": [row["labels"] for row in kept]}


def tokenize_dataset(dataset, tokenizer, max_length: int | None, num_proc: int | None = None, pause=None) -> tuple:
    """Map rows with ``prompt``/``completion`` message columns to ``input_ids``/``labels``; drop the too-long ones.

    ``pause`` (:class:`llama_squad.pause.PauseTokens`, whose tokens ``tokenizer`` holds): every example gets the
    pause tokens before its last answer, where inference puts them, unsupervised.

    Returns (tokenized dataset with only those two columns, number of examples dropped for exceeding ``max_length``).
    """
    from datasets import Features, Sequence, Value  # Sequence: also in datasets 3 (List came with 4)

    missing = [c for c in ("prompt", "completion") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"tokenize_dataset needs conversational 'prompt' and 'completion' columns; the dataset has "
            f"{dataset.column_names} (missing {missing})"
        )
    _state(tokenizer)  # fail early, in this process, on a tokenizer without a chat template
    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
    tokenized = dataset.map(
        _tokenize_batch,
        batched=True,
        remove_columns=dataset.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "pause": pause},
        features=features,
        num_proc=num_proc,
        desc="Tokenizing",
    )
    dropped = len(dataset) - len(tokenized)
    logger.info("tokenized %d examples; dropped %d longer than max_length %s", len(tokenized), dropped, max_length)
    return tokenized, dropped
