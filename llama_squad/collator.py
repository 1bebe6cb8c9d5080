"""Pads tokenized examples into batches; labels are padded with IGNORE_INDEX, never derived from pad ids.

The padding is TRL's (``DataCollatorForLanguageModeling``, the collator SFTTrainer builds itself): it pads our
``input_ids`` and ``labels`` as they are, and lays a padding-free batch out as one row. ``AnswerOnlyCollator`` adds
the refusal of examples that would not train answer-only: TRL's collator trains an example without ``labels`` on every
token (the prompt too), and pads ``input_ids`` and ``labels`` of unequal lengths each to its own width (labels cut
short silently, or a shape error in the loss).
"""

from dataclasses import dataclass

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

REQUIRED_KEYS = ("input_ids", "labels")


@dataclass
class AnswerOnlyCollator(DataCollatorForLanguageModeling):
    """Right-pads ``{"input_ids", "labels"}`` examples (other keys are ignored) into tensors.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` and ``labels`` (padded with
    IGNORE_INDEX). The labels are the examples' own: a position whose token equals the pad id keeps its label, so an
    end-of-turn token that is also the pad token (SmolLM2: pad == eos == ``<|im_end|>``) is still trained.

    ``padding_free=True`` concatenates the whole batch into one row of shape (1, total) with ``position_ids`` that
    restart at 0 for each example and no ``attention_mask`` (plus TRL's ``cu_seq_lens_*``, ``max_length_*`` and
    ``seq_idx``, the example boundaries for flash attention); the label of each example's first token is ignored so
    that no example is trained to predict the next one. It needs an attention implementation that reads the example
    boundaries (``llama_squad.training.PACKED_ATTENTION``): flash attention reads ``cu_seq_lens_*``; for sdpa, eager
    and flex_attention, transformers (5.25: ``masking_utils.find_packed_sequence_indices``) builds a block-causal mask
    from the restarting ``position_ids``, but only when the forward has no KV cache (SFTTrainer passes
    ``use_cache=False``; with the model config's ``use_cache=True`` the examples attend to each other). Measured in
    tests/test_packing.py. ``pad_to_multiple_of`` then pads that single row (position ids 0, labels IGNORE_INDEX).
    """

    def __post_init__(self):
        if self.pad_token_id is None:
            raise ValueError(
                "AnswerOnlyCollator: pad_token_id is None; give the tokenizer a pad token first "
                "(e.g. tokenizer.pad_token = tokenizer.eos_token: labels never come from pad ids, so this is safe)"
            )
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1
        ):
            raise ValueError(
                "AnswerOnlyCollator: pad_to_multiple_of must be a positive int or None, "
                f"got {self.pad_to_multiple_of!r}"
            )

    def torch_call(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("AnswerOnlyCollator: empty batch")
        for i, example in enumerate(examples):
            missing = [key for key in REQUIRED_KEYS if key not in example]
            if missing:
                raise ValueError(
                    f"AnswerOnlyCollator: example {i} has keys {sorted(example)}; it needs {list(REQUIRED_KEYS)} "
                    f"(missing {missing}); tokenize it with llama_squad.tokenization.tokenize_dataset"
                )
            n_ids, n_labels = len(example["input_ids"]), len(example["labels"])
            if n_ids != n_labels or not n_ids:
                raise ValueError(
                    f"AnswerOnlyCollator: example {i} has {n_ids} input_ids and {n_labels} labels; "
                    "they must be equally long and not empty"
                )
        return super().torch_call([{key: example[key] for key in REQUIRED_KEYS} for example in examples])
