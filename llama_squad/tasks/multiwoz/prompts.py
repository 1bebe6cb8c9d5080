"""MultiWOZ questions and prompts: slot and domain questions, messages around a dialogue, targets, constraints."""

import json
from collections.abc import Iterable
from dataclasses import dataclass

from llama_squad.answers import NO_ANSWER, format_json_answer
from llama_squad.tasks.multiwoz.readers import Dialogue
from llama_squad.tasks.multiwoz.schema import DOMAINS, DONTCARE, SCHEMA_SLOTS, Slot

GRANULARITIES = ("slot", "domain")
TRUNCATION_MARKER = "(earlier turns left out)\n"
# The answer format comes first in the user message, the same for every question of a granularity, so that the
# questions of one user turn share everything but their last line (the question): test.py computes that shared prefix
# once per turn (prefix sharing) and each question adds a few tokens of its own.
ANSWER_INSTRUCTION = (
    'Answer the question that follows the dialogue. Reply with JSON only, in the form {"answer": "..."}. Reply '
    f"{format_json_answer(DONTCARE)} if the user has no preference, and {format_json_answer(NO_ANSWER)} if the "
    "dialogue has not set this value."
)
DOMAIN_INSTRUCTION = (
    "Answer the question that follows the dialogue. Reply with JSON only: one object with exactly the keys the "
    'question lists, in that order. Give "dontcare" for a slot the user has no preference about, and '
    f'"{NO_ANSWER}" for a slot the dialogue has not set.'
)


@dataclass(frozen=True)
class Question:
    """One question asked at every user turn: a slot (slot granularity) or a domain's slots (domain granularity)."""

    name: str  # the slot (hotel-pricerange) or the domain (hotel)
    domain: str
    slots: tuple[Slot, ...]
    text: str  # the question, as in the ``question`` column
    lead: str  # what comes before the dialogue in the user message: the answer format (the same for every question)
    block: str  # what follows the dialogue: the question (and, for a domain, an example of the reply)


def slot_question(slot: Slot, list_values: bool) -> str:
    """The question that asks for one slot."""
    text = f"What value does the user want for {slot.name} ({slot.description})?"
    if list_values and slot.values:
        text += f" Possible values: {', '.join(slot.values)}."
    return text


def domain_question(domain: str, slots: Iterable[Slot], list_values: bool) -> str:
    """The question that asks for every slot of a domain."""
    lines = [f"What values does the user want for these {domain} slots?"]
    for slot in slots:
        values = f"; one of {', '.join(slot.values)}" if list_values and slot.values else ""
        lines.append(f"- {slot.key} ({slot.description}{values})")
    return "\n".join(lines)


def make_questions(slots: list[Slot], granularity: str, list_values: bool) -> list[Question]:
    """The questions of every user turn, in slot (or domain) order."""
    if granularity == "slot":
        groups = [(s.name, (s,), slot_question(s, list_values)) for s in slots]
    elif granularity == "domain":
        by_domain = [(d, tuple(s for s in slots if s.domain == d)) for d in DOMAINS]
        groups = [(d, group, domain_question(d, group, list_values)) for d, group in by_domain]
    else:
        raise ValueError(f"--granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    return [
        Question(name, group[0].domain, group, text, *instruction(name, group, text)) for name, group, text in groups
    ]


def instruction(name: str, slots: tuple[Slot, ...], text: str) -> tuple[str, str]:
    """(what precedes the dialogue, what follows it) in the user message of the question ``name`` about ``slots``."""
    if len(slots) == 1 and name == slots[0].name:
        return ANSWER_INSTRUCTION, f"\nQuestion: {text}"
    example = json.dumps({s.key: "..." for s in slots}, ensure_ascii=False)
    return DOMAIN_INSTRUCTION, f"\nQuestion: {text}\nReply in the form {example}"


def history_lines(dialogue: Dialogue) -> list[str]:
    """The dialogue as lines ``"User: ..."`` / ``"System: ..."``, each ending with a newline."""
    return [f"{speaker}: {text}\n" for speaker, text in dialogue.utterances]


def build_messages(history: str, question: Question, target: str, system_prompt: str) -> tuple[list[dict], list[dict]]:
    """(prompt, completion) messages of one question about ``history`` (lines from :func:`history_lines`, maybe
    prefixed by :data:`TRUNCATION_MARKER`); used for training and evaluation alike."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    user = {"role": "user", "content": f"{question.lead}\n\nDialogue:\n{history}{question.block}"}
    return system + [user], [{"role": "assistant", "content": target}]


class TurnHistory:
    """The history of one user turn (utterances before ``end``) from a given utterance on, each rendered once."""

    def __init__(self, lines: list[str], end: int):
        self.lines, self.end, self.rendered = lines, end, {}

    def __call__(self, start: int) -> str:
        if start not in self.rendered:
            marker = TRUNCATION_MARKER if start else ""
            self.rendered[start] = marker + "".join(self.lines[start : self.end])
        return self.rendered[start]


def target_of(question: Question, state: dict[str, tuple[str, ...]]) -> str:
    """The JSON answer of ``question`` for a gold state: the first gold alternative, ``"?"`` when not set."""
    if len(question.slots) == 1 and question.name == question.slots[0].name:
        values = state.get(question.name)
        return format_json_answer(values[0] if values else NO_ANSWER)
    answer = {}
    for s in question.slots:
        values = state.get(s.name)
        answer[s.key] = values[0] if values else NO_ANSWER
    return json.dumps(answer, ensure_ascii=False)


def dialogue_of(example: dict) -> str:
    """The dialogue lines of an example's prompt (what :func:`build_messages` put before the question)."""
    content = next(m["content"] for m in example["prompt"] if m["role"] == "user")
    start = len("Dialogue:\n") if content.startswith("Dialogue:\n") else 0
    end = content.rfind("\nQuestion: ")
    history = content[start : end if end >= 0 else len(content)]
    return history.removeprefix(TRUNCATION_MARKER)


def constraint_of(example: dict, mode: str):
    """What ``--constrain mode`` lets the model answer (a :class:`llama_squad.constrain.AnswerSpec`; None: anything):
    the keys asked, in order (``answer``, or a domain's slots), each any string (json), or (extractive) one of a
    categorical slot's schema values, or a span of the dialogue lower-cased (gold values are lower case: 91% of the
    non-categorical MultiWOZ 2.1 test values are spans of the lower-cased dialogue, 63% of the dialogue as written),
    or "dontcare", or "?"."""
    from llama_squad.constrain import AnswerSpec, Field, json_spec

    if mode == "none":
        return None
    domain = "slots" in example
    slots = list(example["slots"]) if domain else [example["slot"]]
    keys = [name.split("-", 1)[1] for name in slots] if domain else ["answer"]
    if mode == "json":
        return json_spec(keys)
    dialogue = dialogue_of(example).lower()
    fields = []
    for key, name in zip(keys, slots, strict=True):
        values = SCHEMA_SLOTS[name][1] if name in SCHEMA_SLOTS else ()
        if values:
            fields.append(Field(key, choices=(*values, DONTCARE, NO_ANSWER)))
        else:
            fields.append(Field(key, source=dialogue, choices=(DONTCARE, NO_ANSWER)))
    return AnswerSpec(tuple(fields))
