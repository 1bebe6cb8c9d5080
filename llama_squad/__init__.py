"""Fine-tune chat LLMs to answer from a text in JSON, and to say "?" when the text holds no answer."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns when imported on CPUs with AVX512-BF16 that an optional kernel package is missing: noise here
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

IGNORE_INDEX = -100
