"""AnswerOnlyCollator (TRL's collator, refusing what would not train answer-only): exact padded tensors, labels never
taken from pad ids, padding-free rows."""

import pytest
import torch

from llama_squad.collator import AnswerOnlyCollator

BATCH = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "id": "first"},  # other keys are ignored
    {"input_ids": [8, 9], "labels": [-100, 9]},
]


# TRL's example boundaries of a padding-free row, for flash attention (int32, as TRL makes them)
BOUNDARIES = {"cu_seq_lens_q": torch.int32, "cu_seq_lens_k": torch.int32, "seq_idx": torch.int32}


def assert_batch(batch: dict, expected: dict) -> None:
    assert sorted(batch) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, int):  # max_length_q / max_length_k
            assert batch[key] == value, (key, batch[key])
            continue
        assert batch[key].dtype == BOUNDARIES.get(key, torch.long), key
        assert torch.equal(batch[key], torch.tensor(value, dtype=batch[key].dtype)), (key, batch[key])


def test_right_pads_ids_mask_and_labels():
    assert_batch(
        AnswerOnlyCollator(pad_token_id=0)(BATCH),
        {
            "input_ids": [[5, 6, 7], [8, 9, 0]],
            "attention_mask": [[1, 1, 1], [1, 1, 0]],
            "labels": [[-100, 6, 7], [-100, 9, -100]],
        },
    )


def test_the_end_of_turn_label_survives_when_pad_equals_eos():
    """SmolLM2: pad == eos == <|im_end|> (2 here); only the padding positions are ignored."""
    batch = [{"input_ids": [1, 5, 2], "labels": [-100, 5, 2]}, {"input_ids": [1, 2], "labels": [-100, 2]}]
    assert_batch(
        AnswerOnlyCollator(pad_token_id=2)(batch),
        {
            "input_ids": [[1, 5, 2], [1, 2, 2]],
            "attention_mask": [[1, 1, 1], [1, 1, 0]],
            "labels": [[-100, 5, 2], [-100, 2, -100]],
        },
    )


def test_the_end_of_turn_label_survives_with_the_real_smollm2_tokenizer(tokenizers_dir):
    from transformers import AutoTokenizer

    from llama_squad.tokenization import tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(tokenizers_dir / "smollm2-135m-instruct")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    user = [{"role": "user", "content": "Capital?"}]
    examples = [
        tokenize_conversation(tokenizer, user, [{"role": "assistant", "content": answer}]) for answer in ("yes", "no!")
    ]
    batch = AnswerOnlyCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["labels"][row, n - 1] == tokenizer.eos_token_id  # <|im_end|>, the last supervised token
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert (batch["labels"][row, n:] == -100).all()


def test_pad_to_multiple_of():
    assert_batch(
        AnswerOnlyCollator(pad_token_id=0, pad_to_multiple_of=4)(BATCH),
        {
            "input_ids": [[5, 6, 7, 0], [8, 9, 0, 0]],
            "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 0]],
            "labels": [[-100, 6, 7, -100], [-100, 9, -100, -100]],
        },
    )


def test_padding_free_concatenates_with_restarting_positions():
    assert_batch(
        AnswerOnlyCollator(pad_token_id=0, padding_free=True)(BATCH),
        {
            "input_ids": [[5, 6, 7, 8, 9]],
            "position_ids": [[0, 1, 2, 0, 1]],
            "labels": [[-100, 6, 7, -100, 9]],
            "cu_seq_lens_q": [0, 3, 5],
            "cu_seq_lens_k": [0, 3, 5],
            "max_length_q": 3,
            "max_length_k": 3,
            "seq_idx": [[0, 0, 0, 1, 1]],
        },
    )


def test_padding_free_ignores_each_first_label_and_pads_to_a_multiple():
    batch = [{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8, 9], "labels": [7, 8, 9]}]
    assert_batch(
        AnswerOnlyCollator(pad_token_id=0, pad_to_multiple_of=4, padding_free=True)(batch),
        {
            "input_ids": [[5, 6, 7, 8, 9, 0, 0, 0]],
            "position_ids": [[0, 1, 0, 1, 2, 0, 0, 0]],
            "labels": [[-100, 6, -100, 8, 9, -100, -100, -100]],
            # each padding position is a sequence of its own (position 0): it attends to itself only
            "cu_seq_lens_q": [0, 2, 5, 6, 7, 8],
            "cu_seq_lens_k": [0, 2, 5, 6, 7, 8],
            "max_length_q": 3,
            "max_length_k": 3,
            "seq_idx": [[0, 0, 1, 1, 1, 2, 3, 4]],
        },
    )


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="pad_token_id is None"):
        AnswerOnlyCollator(pad_token_id=None)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        AnswerOnlyCollator(pad_token_id=0, pad_to_multiple_of=0)
    collator = AnswerOnlyCollator(pad_token_id=0)
    with pytest.raises(ValueError, match=r"example 0 has keys \['input_ids'\].*missing \['labels'\]"):
        collator([{"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="example 1 has 2 input_ids and 1 labels"):
        collator([BATCH[0], {"input_ids": [1, 2], "labels": [2]}])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
