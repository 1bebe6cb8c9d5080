"""What the benchmarks share: data paths, dev-split questions, a tiny model, device and memory figures, timing, JSON.

The benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on ``sys.path`` and they
``import common``; importing it puts this checkout first on ``sys.path``, so that ``llama_squad`` is this one.
"""

import json
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
DEV = SHARED / "data" / "squad_v2" / "dev-v2.0.json"
MULTIWOZ21 = SHARED / "data" / "multiwoz21"
TOKENIZERS = SHARED / "tokenizers"
SMOLLM2 = TOKENIZERS / "smollm2-135m-instruct"
TEST_ARTICLES = "25:35"  # the dev-split protocol: articles 25-34 of dev-v2.0.json are the test split


def quiet() -> None:
    """Only errors from the libraries: no warnings, info logs or progress bars between the figures."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    disable_progress_bar()
    hf_logging.set_verbosity_error()


def missing_data(path: Path) -> bool:
    """Whether ``path`` (shared data a benchmark reads) is absent, said on stderr; the benchmark then exits with 1."""
    if path.exists():
        return False
    print(f"{path} not found: this benchmark needs ../shared/data beside the checkout", file=sys.stderr)
    return True


def print_header(header: str) -> None:
    """A table's header line, and a rule as long under it."""
    print(header)
    print("-" * len(header))


def write_json(path: str | Path, payload: dict) -> None:
    """Write the figures to ``path`` (indented JSON) and say so."""
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------- questions


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


# ---------------------------------------------------------------------------------------------------- models


def tiny_model(device: str):
    """A random 4-layer Llama (hidden 256) with the real SmolLM2 tokenizer; weights large enough to vary answers."""
    from llama_squad.models import load_tokenizer, resolve_dtype
    from llama_squad.testing import random_llama

    tokenizer = load_tokenizer(SMOLLM2, padding_side="left")
    model = random_llama(
        tokenizer,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        initializer_range=0.3,
    )
    return model.to(device=device, dtype=resolve_dtype("auto")).eval(), tokenizer


def load_model(name: str):
    """(model, tokenizer) to generate with: ``tiny`` (:func:`tiny_model`), or a model_name_or_path."""
    import torch

    if name == "tiny":
        return tiny_model("cuda" if torch.cuda.is_available() else "cpu")
    from llama_squad.config import ModelLoadingArguments
    from llama_squad.models import load_for_inference

    return load_for_inference(ModelLoadingArguments(name))  # bfloat16 on a GPU that has it, float32 on the CPU


# ---------------------------------------------------------------------------------------------------- machine


def device_name() -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def load_average() -> float:
    """The 1-minute load average: other processes on the machine skew CPU timings."""
    return os.getloadavg()[0]


def load_line(before: float, after: float) -> str:
    return f"1-min load average: {before:.1f} at the start, {after:.1f} at the end ({os.cpu_count()} cores)"


def reset_peak_rss() -> None:
    """Start a new peak for VmHWM (Linux: writing 5 to clear_refs resets it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def proc_status_kib(key: str) -> int | None:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``: KiB), None when absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_memory_mib() -> float:
    """CUDA's allocator peak, or the process's max RSS so far on a CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------------- timing


def best_time(function, repeats: int, *args) -> tuple[float, object]:
    """(best wall time in seconds of ``function(*args)`` over ``repeats`` runs, the last result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def warm_up(answerer, questions: list[dict], batch_size: int) -> None:
    """One short generate of a full batch of the first question, so that no timed run pays the first call's set-up."""
    from llama_squad.generation import GenerationOptions, Generator

    warm = Generator(answerer.generator.model, answerer.tokenizer, GenerationOptions(max_new_tokens=2))
    prompt = answerer.prompt_ids(questions[0]["prompt"], last_turn=True)[0]
    warm.generate([prompt] * min(batch_size, len(questions)))


def timed_run(answerer, questions: list[dict], batch_size: int, folder: Path, label: str, warm: bool = True) -> dict:
    """Warm up (unless ``warm`` is false: the model already ran this batch size), then time test.py's
    ``answer_examples`` with ``answerer`` (:class:`llama_squad.evaluation.Answerer`) end to end; its figures and raw
    outputs by id."""
    import torch

    from llama_squad.evaluation import answer_examples
    from llama_squad.results import read_results

    if warm:
        warm_up(answerer, questions, batch_size)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    output_csv = folder / label / "results.csv"
    start = time.perf_counter()
    answered, _ = answer_examples(answerer, questions, output_csv, batch_size, progress=sys.stderr.isatty())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    results = read_results(output_csv)
    written = results["example_id"].nunique()  # a MultiWOZ domain question has a row per slot
    if answered != len(questions) or written != len(questions):
        raise RuntimeError(f"{label}: answered {answered} and wrote {written} of {len(questions)} questions")
    tokens = int(results["completion_tokens"].sum())
    return {
        "questions": answered,
        "batch_size": batch_size,
        "seconds": seconds,
        "questions_per_s": answered / seconds,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "mean_prompt_tokens": float(results["prompt_tokens"].mean()),
        "peak_memory_mib": peak_memory_mib(),
        "outputs": dict(zip(results["id"], results["raw_output"], strict=True)),
    }
