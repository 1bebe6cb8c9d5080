"""Shared fixtures: where the real data and tokenizers are, and skipping GPU tests without CUDA."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SQUAD_DEV = SHARED / "data" / "squad_v2" / "dev-v2.0.json"
TOKENIZERS = SHARED / "tokenizers"


def require(path: Path, what: str) -> Path:
    """``path``, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"{path} not found: {what} needs ../shared beside the checkout")
    return path


@pytest.fixture(scope="session")
def squad_dev() -> Path:
    return require(SQUAD_DEV, "the real SQuAD v2 dev set")


@pytest.fixture(scope="session")
def tokenizers_dir() -> Path:
    return require(TOKENIZERS, "the real chat tokenizers")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def write_squad(path: Path, n_articles: int = 6, questions_per_article: int = 4) -> Path:
    """A small synthetic SQuAD v2 file: every other question unanswerable."""
    import json

    data = []
    for a in range(n_articles):
        context = f"The town of Alder{a} lies on the river Kell. It was founded in {1800 + a} by farmers."
        qas = []
        for q in range(questions_per_article):
            qid = f"a{a}q{q}"
            if q % 2 == 0:
                answer = str(1800 + a)
                answers = [{"text": answer, "answer_start": context.index(answer)}]
                qas.append(
                    {
                        "id": qid,
                        "question": f"When was Alder{a} founded ({q})?",
                        "answers": answers,
                        "is_impossible": False,
                    }
                )
            else:
                qas.append(
                    {
                        "id": qid,
                        "question": f"Who is the mayor of Alder{a} ({q})?",
                        "answers": [],
                        "is_impossible": True,
                    }
                )
        data.append({"title": f"Alder{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tokenizers_dir) -> Path:
    return tokenizers_dir / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A tiny random Llama (2 layers, hidden 64) saved with the real SmolLM2 tokenizer and chat template."""
    from transformers import AutoTokenizer

    from llama_squad.testing import random_llama

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    model = random_llama(
        tokenizer, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """A chat dataset built by create_dataset.py from the synthetic SQuAD file (train/validation/test)."""
    import create_dataset

    folder = tmp_path_factory.mktemp("tiny_data")
    source = write_squad(folder / "squad.json")
    out = folder / "dataset"
    argv = [
        "--task",
        "squad_v2",
        "--train_file",
        str(source),
        "--test_articles",
        "4:6",
        "--validation_fraction",
        "0.25",
        "--output_dir",
        str(out),
    ]
    assert create_dataset.main(argv) == 0
    return out
