"""SQuAD v2 as chat messages: the instructions, a question's prompt and target, and what --constrain allows."""

from llama_squad.answers import NO_ANSWER, format_json_answer
from llama_squad.tasks.squad_v2.options import PROMPT_STYLES
from llama_squad.tasks.squad_v2.readers import Record

ANSWER_FORMAT = (
    'Reply with JSON only, in the form {"answer": "..."}. '
    f"If the context does not answer the question, reply {format_json_answer(NO_ANSWER)}."
)
SINGLE_TURN_INSTRUCTION = (
    "Copy from the context the shortest span that answers the question, word for word. " + ANSWER_FORMAT
)
MULTI_TURN_INSTRUCTIONS = (
    "Does the context contain the answer to the question? Reply yes or no.",
    f"Copy from the context the shortest span that answers the question, word for word. "
    f"If the context does not answer it, reply {NO_ANSWER}.",
    "Now give that answer as JSON. " + ANSWER_FORMAT,
)


def build_messages(record: Record, prompt_style: str, system_prompt: str) -> tuple[list[dict], list[dict]]:
    """(prompt, completion) messages of one question; the target is the first gold answer, or "?"."""
    target = record.answers[0] if record.answers else NO_ANSWER
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    material = f"Context: {record.context}\n\nQuestion: {record.question}"
    if prompt_style == "single_turn":
        prompt = system + [{"role": "user", "content": f"{material}\n\n{SINGLE_TURN_INSTRUCTION}"}]
        return prompt, [{"role": "assistant", "content": format_json_answer(target)}]
    if prompt_style == "multi_turn":
        first, span, to_json = MULTI_TURN_INSTRUCTIONS
        prompt = system + [{"role": "user", "content": f"{material}\n\n{first}"}]
        completion = [
            {"role": "assistant", "content": "yes" if record.answers else "no"},
            {"role": "user", "content": span},
            {"role": "assistant", "content": target},
            {"role": "user", "content": to_json},
            {"role": "assistant", "content": format_json_answer(target)},
        ]
        return prompt, completion
    raise ValueError(f"unknown prompt style {prompt_style!r}: choose one of {', '.join(PROMPT_STYLES)}")


def constraint_of(example: dict, mode: str):
    """What ``--constrain mode`` lets the model answer (a :class:`llama_squad.constrain.AnswerSpec`; None: anything):
    ``{"answer": ...}`` with any string (json), or with a span of the context or "?" (extractive)."""
    from llama_squad.constrain import AnswerSpec, Field, json_spec

    if mode == "none":
        return None
    if mode == "json":
        return json_spec(["answer"])
    return AnswerSpec((Field("answer", source=example["context"], choices=(NO_ANSWER,)),))
