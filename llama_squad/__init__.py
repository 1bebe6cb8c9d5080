"""Fine-tune chat LLMs to answer from a text in JSON, and to say "?" when the text holds no answer."""

__version__ = "0.1.0"

IGNORE_INDEX = -100
