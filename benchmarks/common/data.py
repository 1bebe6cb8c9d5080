"""The questions and the models the benchmarks run: the dev-split protocol's SQuAD v2 questions, tiny random Llamas."""

import random

from . import DEV, MULTIWOZ21, SMOLLM2, TEST_ARTICLES, TOKENIZERS

QUESTIONS_PER_TURN = {"slot": 30, "domain": 5}  # MultiWOZ: questions a user turn, by granularity
# bench_train's models: the embedded SmolLM2-135M-Instruct, or random ones of these LlamaConfig fields and tokenizers.
TRAINED_MODELS = ("tiny", "embedded", "llama-3.2-1b-shape")
TRAINED_SHAPES = {
    "tiny": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "llama-3.2-1b-shape": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        head_dim=64, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
}  # fmt: skip
TRAINED_TOKENIZERS = {"tiny": SMOLLM2, "llama-3.2-1b-shape": TOKENIZERS / "meta-llama-3-8b-instruct"}
# LlamaConfig fields of bench_eval's tiny model (larger than bench_train's): weights large enough to vary answers.
TINY = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
    initializer_range=0.3,
)


def dev_split(prompt: str = "single_turn"):
    """The dev-split protocol's DatasetDict (dev-v2.0.json, test articles 25:35), as create_dataset.py builds it."""
    from llama_squad.tasks.squad_v2 import Arguments, build_dataset

    return build_dataset(
        Arguments(task="squad_v2", output_dir="", train_file=str(DEV), test_articles=TEST_ARTICLES, prompt=prompt)
    )


def load_questions(limit: int | None, seed: int | None, prompt: str = "single_turn") -> tuple[list[dict], int]:
    """(the first ``limit`` dev-split test questions after a seeded shuffle, or in the split's order when ``seed`` is
    None; how many the split holds)."""
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    questions = [dict(row) for row in dev_split(prompt)["test"]]
    if seed is not None:
        random.Random(seed).shuffle(questions)
    return questions[:limit], len(questions)


def load_turns(granularity: str, turns: int, sample: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(the questions of about ``turns`` user turns of the MultiWOZ 2.1 test split, as create_dataset.py builds them;
    the first question of every turn of the split, to compare prompt lengths with).

    ``sample``: ``first``, the first whole dialogues in file order (short, early histories: the slowest case for
    sharing); ``random``, whole dialogues drawn with ``seed`` until they hold ``turns`` turns, so that the turns have
    the split's mix of history lengths and the time per turn projects to the whole split without bias.
    """
    from datasets.utils.logging import disable_progress_bar

    from llama_squad.tasks.multiwoz import Arguments
    from llama_squad.tasks.multiwoz.dataset import build_split
    from llama_squad.tasks.multiwoz.prompts import make_questions
    from llama_squad.tasks.multiwoz.readers import read_dialogues
    from llama_squad.tasks.multiwoz.schema import default_slots

    disable_progress_bar()
    options = Arguments(task="multiwoz", output_dir="", test_file=str(MULTIWOZ21 / "test.json.zip"))
    questions = make_questions(default_slots(), granularity, options.list_categorical_values)
    dialogues = read_dialogues(MULTIWOZ21 / "test.json.zip")
    order = random.Random(seed).sample(dialogues, len(dialogues)) if sample == "random" else dialogues
    picked, held = [], 0
    for dialogue in order:
        if held >= turns:
            break
        picked.append(dialogue)
        held += len(dialogue.user_positions)
    rows, _ = build_split(picked, questions, system_prompt=options.system_prompt)
    rows = [dict(r) for r in rows]
    if sample == "first":  # exactly the first ``turns`` turns
        rows = rows[: turns * QUESTIONS_PER_TURN[granularity]]
    every_turn, _ = build_split(dialogues, questions[:1], system_prompt=options.system_prompt)
    return rows, [dict(r) for r in every_turn]


def random_model(tokenizer, seed: int = 0, **fields):
    """A seeded random Llama sized to ``tokenizer`` with LlamaConfig ``fields``, built on the GPU in bfloat16 where
    there is one that has it, else on the CPU in float32."""
    import torch

    from llama_squad.models import resolve_dtype
    from llama_squad.testing import random_llama

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return random_llama(tokenizer, seed=seed, dtype=resolve_dtype("auto"), device=device, **fields)


def load_model(name: str):
    """(model, tokenizer) to generate with: ``tiny`` (a :data:`TINY` random Llama with the real SmolLM2 tokenizer),
    or a model_name_or_path (bfloat16 on a GPU that has it, float32 on the CPU)."""
    from llama_squad.models import load_tokenizer

    if name == "tiny":
        tokenizer = load_tokenizer(SMOLLM2, padding_side="left")
        return random_model(tokenizer, **TINY).eval(), tokenizer
    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_for_inference

    return load_for_inference(ModelLoadingArguments(name))


def trained_tokenizer(name: str, tokenizer: str | None = None) -> str:
    """The tokenizer folder of a model of :data:`TRAINED_MODELS` (``tokenizer``, if given, for a random one)."""
    if name == "embedded":
        from llama_squad.models import resolve_model_path

        return resolve_model_path("embedded")
    return str(tokenizer or TRAINED_TOKENIZERS[name])


def trained_model(name: str, tokenizer, seed: int, attn_implementation: str | None, max_length: int):
    """A model of :data:`TRAINED_MODELS` to train, in bf16 on a GPU that supports it, float32 on the CPU; random
    ones seeded."""
    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_model, resolve_model_path

    if name == "embedded":
        return load_model(
            resolve_model_path("embedded"), ModelLoadingArguments(attn_implementation=attn_implementation)
        )
    return random_model(
        tokenizer,
        seed=seed,
        attn_implementation=attn_implementation,
        max_position_embeddings=max(2048, max_length),
        **TRAINED_SHAPES[name],
    )


def dtype_name(model) -> str:
    """The dtype of ``model``'s parameters: ``bfloat16``, ``float32``, ..."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")
