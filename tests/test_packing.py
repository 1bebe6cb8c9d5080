"""Packing and padding-free rows, measured: the same loss and LoRA gradients as the padded batch of the same
examples, no label and no attention across an example boundary, refused where the attention would mix the examples,
and train.py trained on packed rows.

What transformers 5.25 does with a padding-free row (one row, ``position_ids`` restarting at 0 per example, no
attention mask): for sdpa, eager and flex_attention, ``masking_utils.create_causal_mask`` finds the examples
(``find_packed_sequence_indices``) and builds a block-causal mask, but only without a KV cache; SFTTrainer's
``compute_loss`` passes ``use_cache=False``. An implementation masking_utils does not know gets no mask at all.
"""

import importlib.util
import json
import math

import pytest
import torch

import train
from llama_squad import training
from llama_squad.collator import AnswerOnlyCollator
from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig
from llama_squad.files import InputError

# (question, answer): prompts of different lengths, so that the padded batch really pads
CONVERSATIONS = [
    ("When was Alder founded?", "1800"),
    ("The town of Alder lies on the river Kell. It was founded in 1800 by farmers who came down from the hills "
     "with their sheep and their looms. When was it founded, and by whom?", "In 1800, by farmers."),
    ("Who is the mayor?", "The text does not say."),
    ("Kell is a river of the north; its water turns six mills between Alder and the sea. How many mills?", "six"),
]  # fmt: skip
TOLERANCE = 1e-5  # float32: loss and gradients (measured: about 2e-6)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def examples(tokenizer) -> list[dict]:
    """Answer-only examples with the real SmolLM2 chat template (the answer and <|im_end|> supervised)."""
    from llama_squad.tokenization import tokenize_conversation

    return [
        tokenize_conversation(tokenizer, [{"role": "user", "content": q}], [{"role": "assistant", "content": a}])
        for q, a in CONVERSATIONS
    ]


def tiny_llama(tokenizer, attn_implementation, device="cpu", dtype=torch.float32):
    """conftest's tiny model (2 layers, hidden 64, large weights), with ``attn_implementation``."""
    from llama_squad.testing import random_llama

    return random_llama(
        tokenizer, attn_implementation=attn_implementation, device=device, dtype=dtype, hidden_size=64,
        intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, initializer_range=0.3,
    )  # fmt: skip


def lora_trainer(model, tokenizer, examples, output_dir, **options):
    """build_trainer with LoRA (no dropout, so both layouts see the same network) whose B matrices are random: PEFT
    starts them at zero, which would leave the gradients of every A zero."""
    from datasets import Dataset

    config = TrainConfig(
        output_dir=str(output_dir), per_device_train_batch_size=len(examples), report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, **{"max_length": 512, **options},
    )  # fmt: skip
    peft = training.lora_config(ModelArguments(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    trainer = training.build_trainer(model, tokenizer, config, Dataset.from_list(examples), None, peft)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return trainer


def loss_and_gradients(trainer, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    """The training loss of ``batch`` as SFTTrainer computes it (``compute_loss``: use_cache=False, TRL's fused LM
    head) and the gradients of the LoRA parameters."""
    model = trainer.model
    model.train()
    model.zero_grad()
    inputs = {k: v.to(trainer.args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().sum() > 0 for g in grads.values()), "a LoRA tensor got no gradient"
    return loss.item(), grads


def assert_same_training_signal(padded, packed, tolerance=TOLERANCE) -> None:
    (padded_loss, padded_grads), (packed_loss, packed_grads) = padded, packed
    assert math.isfinite(padded_loss) and abs(packed_loss - padded_loss) <= tolerance, (padded_loss, packed_loss)
    assert sorted(packed_grads) == sorted(padded_grads) and len(padded_grads) == 28  # 2 layers x 7 linears x (A, B)
    worst = max((packed_grads[k] - padded_grads[k]).abs().max().item() for k in padded_grads)
    assert worst <= tolerance, f"LoRA gradients differ by up to {worst:.2e}"


def starts_of(lengths: list[int]) -> list[int]:
    return [sum(lengths[:k]) for k in range(len(lengths))]


def assert_labels_stay_inside(batch: dict, pieces: list[dict]) -> None:
    """The row's labels are the examples' own, end to end, and the label at every example start is ignored: with the
    shift of causal LM training, no example is trained to predict the first token of the next one."""
    labels = batch["labels"][0].tolist()
    assert labels == [label for piece in pieces for label in [-100, *piece["labels"][1:]]]
    starts = starts_of([len(piece["input_ids"]) for piece in pieces])
    assert all(labels[s] == -100 for s in starts)
    positions = batch["position_ids"][0].tolist()
    assert [s for s, p in enumerate(positions) if p == 0] == starts
    assert "attention_mask" not in batch


# ---------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_a_packed_row_keeps_its_examples_apart_without_a_kv_cache(attn_implementation, tokenizer, examples):
    """Each example's logits in the packed row equal its logits alone. With a KV cache (the model config's default,
    ``use_cache=True``) transformers skips the per-example mask and the second example sees the first: the reason
    SFTTrainer's ``use_cache=False`` matters."""
    first, second = examples[:2]
    batch = AnswerOnlyCollator(tokenizer.pad_token_id, padding_free=True)([first, second])
    model = tiny_llama(tokenizer, attn_implementation).eval()
    row = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    n = len(first["input_ids"])
    with torch.no_grad():
        alone = [model(torch.tensor([e["input_ids"]])).logits[0] for e in (first, second)]
        apart = model(**row, use_cache=False).logits[0]
        mixed = model(**row, use_cache=True).logits[0]
    # logits of up to ~30 in float32: measured differences of 7e-6
    torch.testing.assert_close(apart[:n], alone[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(apart[n:], alone[1], atol=1e-4, rtol=0)
    assert (mixed[n:] - alone[1]).abs().max() > 1  # measured: 13.5


def test_an_attention_transformers_cannot_mask_mixes_the_examples_and_is_refused(
    tmp_path, monkeypatch, tokenizer, examples
):
    """An attention implementation that masking_utils does not know (a custom or Hub kernel registered with
    AttentionInterface alone) gets no mask from position_ids: the examples of a row attend to each other, so
    validate refuses it by name and build_trainer refuses it when it is the model's own."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa_unknown_to_masking", sdpa_attention_forward)
    model = tiny_llama(tokenizer, "sdpa_unknown_to_masking").eval()
    first, second = examples[:2]
    batch = AnswerOnlyCollator(tokenizer.pad_token_id, padding_free=True)([first, second])
    with torch.no_grad():
        alone = model(torch.tensor([second["input_ids"]])).logits[0]
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    assert (packed[len(first["input_ids"]) :] - alone).abs().max() > 1  # measured: 15

    with pytest.raises(InputError, match="the model's attention implementation sdpa_unknown_to_masking with"):
        lora_trainer(model, tokenizer, examples, tmp_path, padding_free=True)
    lora_trainer(model, tokenizer, examples, tmp_path)  # padded batches are fine with it


def validation_message(tmp_path, attn_implementation, **options) -> str:
    with pytest.raises(InputError) as error:  # the missing dataset is always a problem: the message lists them all
        training.validate(
            ModelArguments(attn_implementation=attn_implementation),
            ScriptArguments(dataset_path=str(tmp_path / "nothing")),
            TrainConfig(output_dir=str(tmp_path / "out"), **options),
        )
    return str(error.value)


@pytest.mark.parametrize("flag", ["packing", "padding_free"])
def test_validate_refuses_what_would_mix_the_examples_with_the_reason(tmp_path, flag):
    for allowed in (None, *training.PACKED_ATTENTION):
        assert "with --packing or --padding_free" not in validation_message(tmp_path, allowed, **{flag: True})
    message = validation_message(tmp_path, "paged|eager", **{flag: True})
    assert "--attn_implementation paged|eager with --packing or --padding_free" in message
    assert "the examples of one row attend to each other" in message and "Use --attn_implementation sdpa" in message
    assert "--attn_implementation" not in validation_message(tmp_path, "paged|eager")  # not packed: no matter
    if flag == "packing":
        message = validation_message(tmp_path, "sdpa", packing=True, packing_strategy="wrapped")
        assert "--packing_strategy wrapped cuts examples across rows" in message


# ------------------------------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_a_padding_free_row_trains_like_the_padded_batch(attn_implementation, tmp_path, tokenizer, examples):
    lengths = [len(e["input_ids"]) for e in examples]
    assert len(set(lengths)) == len(lengths)  # the padded batch pads
    trainer = lora_trainer(tiny_llama(tokenizer, attn_implementation), tokenizer, examples, tmp_path)
    padded = AnswerOnlyCollator(tokenizer.pad_token_id)(examples)
    packed = AnswerOnlyCollator(tokenizer.pad_token_id, padding_free=True)(examples)
    assert padded["input_ids"].shape == (4, max(lengths)) and packed["input_ids"].shape == (1, sum(lengths))
    assert_labels_stay_inside(packed, examples)
    assert_same_training_signal(loss_and_gradients(trainer, padded), loss_and_gradients(trainer, packed))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_trl_packing_trains_like_the_padded_batch(attn_implementation, tmp_path, tokenizer, examples):
    """TRL packs whole examples into rows of max_length (BFD, none cut) and its collator lays a batch of rows out as
    one padding-free row; the same loss and gradients as those examples padded."""
    many = [*examples, *examples[::-1]]  # 8 examples of 4 lengths, into rows of 128 tokens
    trainer = lora_trainer(
        tiny_llama(tokenizer, attn_implementation), tokenizer, many, tmp_path, max_length=128, packing=True
    )
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    pieces = []
    for row in rows:
        assert sum(row["seq_lengths"]) == len(row["input_ids"]) <= 128
        for start, length in zip(starts_of(row["seq_lengths"]), row["seq_lengths"], strict=True):
            pieces.append({key: list(row[key][start : start + length]) for key in ("input_ids", "labels")})
    key = lambda e: (e["input_ids"], e["labels"])  # noqa: E731
    assert sorted(map(key, pieces)) == sorted(map(key, many))  # every example whole, once
    assert len(rows) < len(many)  # some rows hold several

    packed = trainer.data_collator(rows)
    assert packed["input_ids"].shape == (1, sum(len(p["input_ids"]) for p in pieces))
    assert_labels_stay_inside(packed, pieces)
    padded = AnswerOnlyCollator(tokenizer.pad_token_id)(pieces)
    assert_same_training_signal(loss_and_gradients(trainer, padded), loss_and_gradients(trainer, packed))


@pytest.mark.gpu
@pytest.mark.parametrize("attn_implementation", ["flex_attention", "flash_attention_2"])
def test_on_a_gpu_packed_rows_train_like_the_padded_batch(attn_implementation, tmp_path, tokenizer, examples):
    """The implementations a CPU cannot train with: flex_attention (no backward on the CPU) in float32, flash
    attention (bf16 or fp16 only) in bfloat16, to bfloat16's precision."""
    if attn_implementation.startswith("flash") and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    dtype = torch.bfloat16 if attn_implementation.startswith("flash") else torch.float32
    model = tiny_llama(tokenizer, attn_implementation, device="cuda", dtype=dtype)
    trainer = lora_trainer(model, tokenizer, examples, tmp_path, bf16=dtype == torch.bfloat16)
    padded = AnswerOnlyCollator(tokenizer.pad_token_id)(examples)
    packed = AnswerOnlyCollator(tokenizer.pad_token_id, padding_free=True)(examples)
    tolerance = TOLERANCE if dtype == torch.float32 else 5e-2
    assert_same_training_signal(loss_and_gradients(trainer, padded), loss_and_gradients(trainer, packed), tolerance)


# ------------------------------------------------------------------------------------------------------ train.py


@pytest.mark.parametrize("flag", ["--packing", "--padding_free"])
def test_train_py_trains_on_packed_rows(flag, tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir):
    """train.py itself (sdpa, the model's default): every training and validation batch is one row holding several
    whole examples, the run saves its adapter."""
    batches = []
    build = training.build_trainer

    def recording_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        collate = trainer.data_collator
        trainer.data_collator = lambda examples: batches.append(collate(examples)) or batches[-1]
        return trainer

    monkeypatch.setattr(training, "build_trainer", recording_build)
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_dataset_dir), "--output_dir", str(out),
        flag, "--max_steps", "3", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "5e-3", "--warmup_steps", "0", "--logging_steps", "1", "--save_steps", "10",
        "--eval_steps", "2", "--max_length", "512", "--lora_r", "4", "--lora_alpha", "8", "--report_to", "none",
        "--seed", "0", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert train.main(argv) == 0
    assert batches
    for batch in batches:
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
        assert (batch["position_ids"][0] == 0).sum() >= 2  # several examples in the row (~135 tokens each)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert any("eval_loss" in e for e in state["log_history"])
    assert (out / "adapter_model.safetensors").exists()
