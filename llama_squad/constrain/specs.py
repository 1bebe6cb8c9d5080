"""The answer forms a task asks for: the keys of its JSON object, and what each value may be."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One value of an answer object: its key, and what the value may be."""

    key: str
    free: bool = False  # any JSON string (``json`` mode); else a span of ``source`` or one of ``choices``
    source: str | None = None  # any non-empty span of this text (matched character by character)
    choices: tuple[str, ...] = ()  # or exactly one of these


@dataclass(frozen=True)
class AnswerSpec:
    """The answer object a question expects: its fields, in order."""

    fields: tuple[Field, ...]


def json_spec(keys: tuple[str, ...] | list[str]) -> AnswerSpec:
    """An object of these keys in order, each value any JSON string."""
    return AnswerSpec(tuple(Field(key, free=True) for key in keys))
