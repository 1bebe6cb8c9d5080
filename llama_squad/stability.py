"""Numerical guards for half-precision training."""

import logging

import torch

logger = logging.getLogger(__name__)


def _clamp_first_input(module, args):
    hidden = args[0]
    if hidden.dtype == torch.float16:
        limit = torch.finfo(torch.float16).max
        hidden = torch.clamp(hidden, min=-limit, max=limit)  # ±inf → the largest finite values; NaN stays NaN
        return (hidden, *args[1:])
    return None


def add_fp16_overflow_guard(model: torch.nn.Module) -> list:
    """Clamp ±inf hidden states to float16's finite range before each decoder layer's input norm.

    Llama-2's activations overflow float16 in a few layers; the inf then turns into NaN in the next norm. Hooks
    (not a patched transformers) on every module named ``*input_layernorm``; returns the hook handles.
    """
    handles = [
        module.register_forward_pre_hook(_clamp_first_input)
        for name, module in model.named_modules()
        if name.endswith("input_layernorm")
    ]
    if not handles:
        raise ValueError(
            f"--fp16_overflow_guard: {type(model).__name__} has no '*input_layernorm' modules to guard; "
            "it is meant for Llama-style decoders: turn the option off for this model"
        )
    logger.info("fp16 overflow guard on %d decoder layers", len(handles))
    return handles
