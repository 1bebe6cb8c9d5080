"""Pads tokenized examples into batches; labels are padded with IGNORE_INDEX, never derived from pad ids."""

from dataclasses import dataclass

import torch

from llama_squad import IGNORE_INDEX

REQUIRED_KEYS = ("input_ids", "labels")


@dataclass
class AnswerOnlyCollator:
    """Right-pads ``{"input_ids", "labels"}`` examples (other keys are ignored) into tensors.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` and ``labels`` (padded with
    IGNORE_INDEX). The labels are the examples' own: a position whose token equals the pad id keeps its label, so an
    end-of-turn token that is also the pad token (SmolLM2: pad == eos == ``<|im_end|>``) is still trained.

    ``padding_free=True`` concatenates the whole batch into one row of shape (1, total) with ``position_ids`` that
    restart at 0 for each example and no ``attention_mask``; the label of each example's first token is ignored so that
    no example is trained to predict the next one. It needs an attention implementation that reads the example
    boundaries from ``position_ids``: ``attn_implementation="flash_attention_2"`` (or 3), or, in transformers 5, sdpa
    and eager when the forward runs without a KV cache (``use_cache=False``); otherwise the examples attend to each
    other. ``pad_to_multiple_of`` then pads that single row (position ids 0, labels IGNORE_INDEX).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_free: bool = False

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

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if not multiple else -(-length // multiple) * multiple

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("AnswerOnlyCollator: empty batch")
        rows = []
        for i, example in enumerate(examples):
            missing = [key for key in REQUIRED_KEYS if key not in example]
            if missing:
                raise ValueError(
                    f"AnswerOnlyCollator: example {i} has keys {sorted(example)}; it needs {list(REQUIRED_KEYS)} "
                    f"(missing {missing}); tokenize it with llama_squad.tokenization.tokenize_dataset"
                )
            ids, labels = list(example["input_ids"]), list(example["labels"])
            if len(ids) != len(labels) or not ids:
                raise ValueError(
                    f"AnswerOnlyCollator: example {i} has {len(ids)} input_ids and {len(labels)} labels; "
                    "they must be equally long and not empty"
                )
            rows.append((ids, labels))
        if self.padding_free:
            return self._flatten(rows)
        width = self._padded_length(max(len(ids) for ids, _ in rows))
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, lbl) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            labels[row, : len(lbl)] = torch.tensor(lbl, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _flatten(self, rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        input_ids, labels, position_ids = [], [], []
        for ids, lbl in rows:
            input_ids += ids
            labels += [IGNORE_INDEX, *lbl[1:]]
            position_ids += range(len(ids))
        pad = self._padded_length(len(input_ids)) - len(input_ids)
        input_ids += [self.pad_token_id] * pad
        labels += [IGNORE_INDEX] * pad
        position_ids += [0] * pad
        return {
            "input_ids": torch.tensor([input_ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([position_ids], dtype=torch.long),
        }
