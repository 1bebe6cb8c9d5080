"""MultiWOZ dialogue state tracking as a :class:`llama_squad.tasks.base.Task`: one question per slot and turn."""

from llama_squad.answers import NO_ANSWER
from llama_squad.tasks.base import CardInfo, ChatForm, Task
from llama_squad.tasks.multiwoz import dataset, prompts, scoring
from llama_squad.tasks.multiwoz.options import NAME, Arguments
from llama_squad.tasks.multiwoz.readers import SPEAKERS
from llama_squad.tasks.multiwoz.schema import default_slots

CHAT_EXAMPLES = (
    (
        "User: I need a cheap hotel in the north of town.\nSystem: How many nights will you stay?\n"
        "User: Three nights, from Friday.",
        "hotel-pricerange",
    ),
    (
        "User: I need a cheap hotel in the north of town.\nSystem: How many nights will you stay?\n"
        "User: Three nights, from Friday.",
        "hotel-area",
    ),
    (
        "User: I need a cheap hotel in the north of town.\nSystem: How many nights will you stay?\n"
        "User: Three nights, from Friday.",
        "hotel-parking",
    ),
)


def dialogue_history(text: str) -> str:
    """A typed dialogue as the dataset renders it (``history_lines``): one ``User: ...``/``System: ...`` line per
    utterance. Lines without a speaker alternate, starting with the user."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        speaker, colon, rest = line.partition(":")
        if colon and speaker.strip().upper() in SPEAKERS:
            lines.append((SPEAKERS[speaker.strip().upper()], rest.strip()))
        else:
            lines.append(("User" if len(lines) % 2 == 0 else "System", line))
    return "".join(f"{speaker}: {utterance}\n" for speaker, utterance in lines)


class MultiWOZ(Task):
    """MultiWOZ DST: the dialogue so far and a slot (or a domain); the answer is its value, "dontcare" or "?"."""

    name = NAME
    title = "MultiWOZ"
    Arguments = Arguments
    extra_result_columns = scoring.EXTRA_RESULT_COLUMNS
    headline_metrics = ("valid_json", "jga", "jga_fuzzy", "jga_trade", "slot_accuracy", "slot_f1")
    signature_metric = "jga"
    threshold_metric = "exact"  # slot accuracy, strict
    threshold_group = "slot"  # one no-answer threshold per slot
    card = CardInfo(
        task_type="text-generation",
        task_name="Dialogue state tracking",
        hub_dataset=None,
        metrics={
            "jga": ("accuracy", "Joint goal accuracy"),
            "jga_fuzzy": ("accuracy", "Joint goal accuracy, fuzzy matching"),
            "jga_trade": ("accuracy", "Joint goal accuracy, TRADE's label normalization"),
            "slot_f1": ("f1", "Slot F1"),
            "valid_json": ("accuracy", "Valid JSON"),
        },
    )

    build_dataset = staticmethod(dataset.build_dataset)
    score_output = staticmethod(scoring.score_output)
    summarize = staticmethod(scoring.summarize)
    constraint_of = staticmethod(prompts.constraint_of)

    def value_probe(self, example):
        """A slot question's value (``{"answer": "?"}`` abstains); a domain question answers several slots in one
        object: none."""
        return None if example.get("slots") else ("answer", NO_ANSWER)

    def evaluation_sample(self, examples, n, seed):
        """Whole turns (every slot question of a turn) drawn with ``seed`` until they hold ``n`` questions, in their
        order: joint goal accuracy needs every slot of a turn."""
        import random

        turns: dict[tuple, list[int]] = {}
        for i, example in enumerate(examples):
            turns.setdefault((example["dialogue_id"], example["turn"]), []).append(i)
        chosen = []
        for key in random.Random(seed).sample(list(turns), len(turns)):
            if len(chosen) >= n:
                break
            chosen += turns[key]
        return [examples[i] for i in sorted(chosen)]

    def questions(self, options) -> dict:
        """The slot questions the chat asks (as the dataset asks them), by slot name."""
        listed = bool(getattr(options, "list_categorical_values", False))
        return {q.name: q for q in prompts.make_questions(default_slots(), "slot", listed)}

    def chat_form(self, options) -> ChatForm:
        slots = tuple(self.questions(options))
        return ChatForm(
            tab="Dialogue state (MultiWOZ)",
            material="Dialogue (User: ... / System: ... lines)",
            question=f"Slot (e.g. {slots[0]})",
            no_answer="Not set: the dialogue has not given this slot a value.",
            button="Value",
            answer_label="Value",
            api_name="slot_value",
            placeholder="User: ...\nSystem: ...\nUser: ...",
            choices=slots,
            examples=CHAT_EXAMPLES,
        )

    def chat_messages(self, material, question, options):
        import difflib

        from llama_squad.files import InputError

        questions = self.questions(options)
        slot = question.strip().lower()
        if slot not in questions:
            close = difflib.get_close_matches(slot, questions, n=1)
            hint = f"did you mean {close[0]}? The slots: " if close else "choose one of "
            raise InputError(f"Unknown slot {question!r}: {hint}{', '.join(questions)}")
        history = dialogue_history(material)
        return prompts.build_messages(history, questions[slot], NO_ANSWER, options.system_prompt)
