"""After training: merge the adapter into the base model, write the model cards, push to the Hub.

train.py calls it at the end of a run. After test.py, refresh the cards with its scores and push:

    python -m llama_squad.export output/smollm2 --metrics_file output/smollm2/eval/metrics.json \\
        --push_adapter you/smollm2-squad-lora
"""

# ~490 lines on purpose: merging, the card and the pushes are the one call train.py, test.py and this CLI share;
# the card is most of it.

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

import yaml

from llama_squad.files import atomic_path

logger = logging.getLogger(__name__)


class HubAccessError(RuntimeError):
    """Pushing was asked for, but the Hub cannot be reached or no token is set."""


def check_hub_access(repo_id: str, option: str = "--hub_repo_id", token: str | None = None) -> str:
    """Fail fast (before any long work) unless ``repo_id`` can be pushed to; returns the user name.

    ``option`` is the flag that asked for the push: ``--hub_repo_id`` or ``--push_adapter`` (ours, USER_OR_ORG/NAME)
    or TRL's ``--push_to_hub`` (whose ``--hub_model_id`` may be a bare NAME, pushed under the token's user).
    """
    from huggingface_hub import get_token, whoami
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if option != "--push_to_hub" and "/" not in repo_id:
        raise HubAccessError(f"{option} {repo_id!r}: expected USER_OR_ORG/NAME")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise HubAccessError(f"{option}: the Hub repository {repo_id!r} is not USER_OR_ORG/NAME")
    later = "push output_dir later (hf upload)"
    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HubAccessError(
            f"{option} ({repo_id}): pushing needs the Hub, but HF_HUB_OFFLINE is set; unset it, or drop "
            f"{option} and {later}"
        )
    token = token or get_token()
    if not token:
        raise HubAccessError(
            f"{option} ({repo_id}): no Hugging Face token: run `hf auth login`, set HF_TOKEN, or drop {option} and "
            f"{later}"
        )
    try:
        return whoami(token=token)["name"]
    except Exception as e:  # network errors, bad tokens: all mean the push would fail at the end
        raise HubAccessError(f"{option} ({repo_id}): cannot reach the Hub with this token ({e})") from None


def merge_adapter(
    base_path: str,
    adapter_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    dtype,
    tokenizer,
    *,
    revision: str = "main",
    trust_remote_code: bool = False,
) -> Path:
    """Load the base model (at ``revision``) in ``dtype``, merge the LoRA adapter into it and save model + tokenizer
    (safetensors).

    Pause tokens: the base model gets their rows before the adapter fills them, and ``pause_tokens.json`` goes with
    the merged model, which test.py then prompts as the adapter was trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llama_squad import pause

    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code
    )
    pause.grow_embeddings(base, len(tokenizer))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_path(output_dir, is_dir=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        pause.save(pause.load(adapter_dir), tmp)
    logger.info("merged the adapter into %s (%s) → %s", base_path, dtype, output_dir)
    return Path(output_dir)


# The options of run_config.yaml that make the recipe in a card (the whole resolved config travels as run_config.yaml).
RECIPE_KEYS = {
    "model": (
        "dtype", "load_in_4bit", "load_in_8bit", "use_peft", "lora_r", "lora_alpha", "lora_dropout",
        "lora_target_modules", "use_rslora", "use_dora",
        "quantization",  # run_config.yaml of the versions before load_in_4bit / load_in_8bit
    ),
    "training": (
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
        "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "optim", "max_length",
        "packing", "bf16", "fp16", "gradient_checkpointing", "seed",
    ),
}  # fmt: skip
# What a pushed adapter is made of: PEFT's files, the tokenizer and chat template train.py saves beside them, the card,
# the resolved recipe and the loss plot (not the checkpoints, the evaluation folder or the merged model).
ADAPTER_FILES = (
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
    "added_tokens.json", "README.md", "run_config.yaml", "loss.png",
    "pause_tokens.json",  # llama_squad.pause.PAUSE_FILE: the pause tokens the adapter was trained with
)  # fmt: skip
ADAPTER = "adapter"
MERGED = "merged"


def dataset_task(dataset_path: str | os.PathLike) -> str | None:
    """The task (``squad_v2``, ``multiwoz``) of a create_dataset.py folder, from its first row; None if unknown."""
    from llama_squad.tasks.common import load_dataset_folder

    try:
        splits = load_dataset_folder(dataset_path)
        split = next(s for s in splits.values() if len(s))
        return split[0]["task"]
    except (OSError, ValueError, KeyError, StopIteration, FileNotFoundError):
        return None


def metrics_task(metrics: dict) -> str | None:
    """The task of test.py's metrics: their ``task`` entry, or (a metrics.json written before it had one) the task
    whose ``signature_metric`` alone they hold; None when they do not tell."""
    from llama_squad.tasks import all_tasks

    if "task" in metrics:
        return metrics["task"]
    found = [task.name for task in all_tasks() if task.signature_metric in metrics]
    return found[0] if len(found) == 1 else None  # none, or several: the keys do not tell


def card_value(value) -> bool:
    """Whether a metric value goes into a card: a finite number or text (NaN and infinity never do: the YAML of the
    model-index would hold ``.nan``/``.inf`` and the table ``nan``)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str)


def recipe(config: dict) -> dict:
    """The options of a resolved config (run_config.yaml: model / script / training) that a card shows."""
    out = {}
    for section, keys in RECIPE_KEYS.items():
        values = config.get(section) or {}
        out.update({k: values[k] for k in keys if k in values and values[k] not in (None, 0, 0.0, False, -1)})
    return out


def model_card(
    kind: str,
    base_model: str,
    dataset_path: str,
    config: dict,
    metrics: dict | None = None,
    train_examples: int | None = None,
    task: str | None = None,
    repo_id: str | None = None,
    best: dict | None = None,
):
    """The Hub model card (``huggingface_hub.ModelCard``) of the adapter (``kind="adapter"``) or the merged model.

    Metadata: ``base_model`` (the Hub id: the embedded model is named by the model it was made from; a local folder is
    left out), ``library_name`` (``peft`` for the adapter, ``transformers`` for the merged model), ``datasets``, tags,
    and a ``model-index`` with the test scores of ``metrics`` (test.py's metrics.json) when given. Text: what the model
    does, how to load it, the scores, the recipe (``config``: run_config.yaml's mapping).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from llama_squad.models import hub_model_id

    if kind not in (ADAPTER, MERGED):
        raise ValueError(f"kind {kind!r}: expected {ADAPTER!r} or {MERGED!r}")
    base_id = hub_model_id(base_model)
    output_dir = (config.get("training") or {}).get("output_dir") or "model"
    name = repo_id.split("/")[-1] if repo_id else Path(output_dir).name + ("-merged" if kind == MERGED else "")
    from llama_squad.tasks import get_task, task_names

    info = get_task(task) if task in task_names() else None
    task_name = info.title if info else ""
    eval_results = []
    for key, (metric_type, metric_name) in (info.card.metrics if info else {}).items():
        value = (metrics or {}).get(key)
        if isinstance(value, int | float) and card_value(value):
            eval_results.append(
                EvalResult(
                    task_type=info.card.task_type,
                    task_name=info.card.task_name,
                    dataset_type=info.card.hub_dataset or task,
                    dataset_name=f"{task_name} (test split of {Path(dataset_path).name})",
                    dataset_split="test",
                    metric_type=metric_type,
                    metric_name=metric_name,
                    metric_value=round(float(value), 2),
                )
            )
    data = ModelCardData(
        base_model=base_id,
        base_model_relation="adapter" if kind == ADAPTER else "finetune",
        library_name="peft" if kind == ADAPTER else "transformers",
        pipeline_tag="text-generation",
        datasets=[info.card.hub_dataset] if info and info.card.hub_dataset else None,
        tags=["llama-squad", "trl", "sft", "lora"] + (["peft"] if kind == ADAPTER else []) + ([task] if task else []),
        model_name=name,
        eval_results=eval_results or None,
    )
    source = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else f"`{base_model}` (a local model)"
    what = "A LoRA adapter for" if kind == ADAPTER else "A fine-tune (LoRA merged into the weights) of"
    load = repo_id or str(Path(output_dir) / ("merged" if kind == MERGED else ""))
    if kind == ADAPTER:
        usage = (
            "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{load}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{load}")'
        )
    else:
        usage = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{load}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{load}")'
        )
    data_line = f"`{dataset_path}`" + (f" ({task_name})" if task_name else "")
    if train_examples is not None:
        data_line += f", {train_examples} training examples"
    lines = [
        f"# {name}",
        "",
        f"{what} {source}, trained with llama-squad (TRL SFT) to answer "
        'from a text in JSON, `{"answer": "..."}`, and to answer `"?"` when the text holds no answer. The loss was on '
        "the answer tokens and the token that ends the assistant turn only.",
        "",
        f"Data: {data_line}.",
        "",
        "## Use",
        "",
        "```python",
        usage,
        "```",
        "",
        "Prompt it as it was trained: the system prompt, then the context and the question, then the answer "
        "instruction (see `llama_squad/tasks/`); `python -m llama_squad.chat` does this.",
        "",
        "## Results",
        "",
    ]
    if metrics:
        lines += ["Test split, scored by llama-squad's `test.py`:", "", "| metric | value |", "|---|---|"]
        shown = {k: v for k, v in metrics.items() if k != "task" and card_value(v)}  # the task: named above
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown.items()]
    else:
        lines.append("Not evaluated yet: run test.py on the test split (its metrics.json then goes into this card).")
    if best:
        lines += ["", f"The weights are those of the best checkpoint by {best['metric']} on the validation questions: "
                  f"step {best['step']}, {best['metric']} {best['value']:.2f}."]  # fmt: skip
    lines += [
        "",
        "## Recipe",
        "",
        "The main options (the whole resolved configuration is `run_config.yaml` beside the adapter):",
        "",
        "```yaml",
        yaml.safe_dump(recipe(config), sort_keys=False).strip(),
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(folder: str | os.PathLike, kind: str, **kwargs) -> Path:
    """Write :func:`model_card` (``kind``: adapter or merged) to ``folder/README.md``, atomically."""
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(str(model_card(kind, **kwargs)), encoding="utf-8")
    return path


def read_metrics(
    output_dir: str | os.PathLike,
    metrics_file: str | os.PathLike | None = None,
    dataset_path: str | os.PathLike | None = None,
) -> dict | None:
    """Test metrics written by test.py: ``metrics_file``, or ``output_dir/eval/metrics.json`` if it exists.

    With ``dataset_path``, metrics of another task than the dataset's (:func:`metrics_task`) are an error: they are
    not scores of the model on that data.
    """
    from llama_squad.files import InputError, read_json

    path = Path(metrics_file) if metrics_file else Path(output_dir) / "eval" / "metrics.json"
    if metrics_file is None and not path.exists():
        return None
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise InputError(f"{path}: not a metrics.json written by test.py (expected a JSON object)")
    task = dataset_task(dataset_path) if dataset_path is not None else None
    found = metrics_task(metrics)
    if task is not None and found is not None and found != task:
        inferred = "" if "task" in metrics else " (inferred from its keys)"
        raise InputError(
            f"{path}: scores of task {found!r}{inferred}, but the dataset {dataset_path} is of task {task!r}: score "
            f"the model on it with test.py --dataset_path {dataset_path}, or move {path} away"
        )
    return metrics


def adapter_files(adapter_dir: str | os.PathLike) -> list[Path]:
    """The files of ``adapter_dir`` that make the shareable adapter (:data:`ADAPTER_FILES`), in that order."""
    folder = Path(adapter_dir)
    return [folder / name for name in ADAPTER_FILES if (folder / name).is_file()]


def hub_adapter_config(adapter_dir: str | os.PathLike, base_model: str) -> bytes:
    """``adapter_config.json`` as it is pushed: ``base_model_name_or_path`` is the base model's Hub id (PEFT wrote the
    local folder it trained from, which no one else has), so ``AutoPeftModelForCausalLM`` finds the base."""
    from llama_squad.models import hub_model_id

    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    base_id = hub_model_id(base_model)
    if base_id:
        config["base_model_name_or_path"] = base_id
    else:
        logger.warning(
            "%s is a local folder: the pushed adapter_config.json names it as the base model; users need the same "
            "folder (or edit base_model_name_or_path to a Hub id)",
            base_model,
        )
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")


def push_adapter(adapter_dir: str | os.PathLike, repo_id: str, base_model: str) -> str:
    """Push the adapter alone (:func:`adapter_files`, with :func:`hub_adapter_config`) to ``repo_id`` in one commit,
    creating the repository if needed; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    files = adapter_files(adapter_dir)
    if not any(f.name.startswith("adapter_model.") for f in files):
        raise HubAccessError(f"--push_adapter {repo_id}: {adapter_dir} holds no adapter weights to push")
    operations = [
        CommitOperationAdd(
            path_in_repo=f.name,
            path_or_fileobj=hub_adapter_config(adapter_dir, base_model) if f.name == "adapter_config.json" else str(f),
        )
        for f in files
    ]
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    commit = api.create_commit(repo_id, operations=operations, commit_message="Upload llama-squad LoRA adapter")
    logger.info("pushed the adapter in %s (%d files) to %s", adapter_dir, len(files), repo_id)
    return str(commit)


def push_folder(folder: str | os.PathLike, repo_id: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (the merged model); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload llama-squad model")
    logger.info("pushed %s to %s", folder, repo_id)
    return str(commit)


def read_run_config(path: Path) -> dict:
    """train.py's resolved options (``run_config.yaml``), checked to hold what a card needs."""
    from llama_squad.files import InputError, read_yaml

    fix = "it is written by train.py: restore it, or train again into this folder"
    resolved = read_yaml(path, fix)
    sections = resolved if isinstance(resolved, dict) else {}
    model, script = sections.get("model"), sections.get("script")
    if not (
        isinstance(model, dict)
        and isinstance(model.get("model_name_or_path"), str)
        and isinstance(script, dict)
        and isinstance(script.get("dataset_path"), str)
    ):
        raise InputError(f"{path}: not written by train.py (no model.model_name_or_path, script.dataset_path); {fix}")
    return resolved


def training_folder(model_folder: str | os.PathLike) -> Path | None:
    """The train.py output folder a model folder belongs to (itself, or the folder its ``merged/`` is in), None for
    a folder train.py did not write (a card that is not ours is left alone)."""
    folder = Path(model_folder)
    for candidate in (folder, folder.parent if folder.name == "merged" else None):
        if candidate is not None and (candidate / "run_config.yaml").is_file():
            return candidate
    return None


def refresh_cards(
    output_dir: str | os.PathLike,
    metrics_file: str | os.PathLike | None = None,
    adapter_repo: str | None = None,
    merged_repo: str | None = None,
) -> list[Path]:
    """Write the model cards of a train.py output folder again (the adapter's, and the merged model's if there is one),
    with the scores of ``metrics_file`` (test.py's metrics.json; default ``output_dir/eval/metrics.json``); returns
    the cards written."""
    output_dir = Path(output_dir)
    resolved = read_run_config(output_dir / "run_config.yaml")
    dataset_path = resolved["script"]["dataset_path"]
    card = dict(
        base_model=resolved["model"]["model_name_or_path"],
        dataset_path=dataset_path,
        config=resolved,
        metrics=read_metrics(output_dir, metrics_file, dataset_path),
        task=dataset_task(dataset_path),
        best=best_checkpoint_of(output_dir, resolved),
    )
    written = []
    merged = output_dir / "merged"
    if (merged / "config.json").is_file():
        written.append(write_model_card(merged, MERGED, repo_id=merged_repo, **card))
    kind = ADAPTER if resolved["model"].get("use_peft", True) else MERGED
    written.append(write_model_card(output_dir, kind, repo_id=adapter_repo, **card))
    return written


def best_checkpoint_of(output_dir: Path, resolved: dict) -> dict | None:
    """The checkpoint the folder's weights are from, as train.py's cards say it (--load_best_model_at_end)."""
    from types import SimpleNamespace

    from llama_squad.resume import best_checkpoint, saved_state

    training = resolved.get("training") or {}
    options = SimpleNamespace(
        load_best_model_at_end=bool(training.get("load_best_model_at_end")),
        metric_for_best_model=training.get("metric_for_best_model"),
    )
    return best_checkpoint(saved_state(str(output_dir)), options)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m llama_squad.export``."""
    from llama_squad.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="python -m llama_squad.export", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("output_dir", help="train.py's output_dir (adapter, run_config.yaml, maybe merged/).")
    parser.add_argument(
        "--metrics_file", help="test.py's metrics.json (default: OUTPUT_DIR/eval/metrics.json if it exists)."
    )
    parser.add_argument("--push_adapter", help="Push the adapter alone to this Hub repository (USER_OR_ORG/NAME).")
    parser.add_argument("--hub_repo_id", help="Push OUTPUT_DIR/merged to this Hub repository (USER_OR_ORG/NAME).")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Rewrite the cards of a trained folder, then push what was asked; 0 on success, 1 on bad input."""
    from llama_squad.cli import exit_code_of, parse_strictly, setup_logging
    from llama_squad.files import InputError

    args = parse_strictly(build_parser(), argv)
    setup_logging()
    output_dir = Path(args.output_dir)
    merged = output_dir / "merged"
    try:
        for repo_id, option in ((args.push_adapter, "--push_adapter"), (args.hub_repo_id, "--hub_repo_id")):
            if repo_id:
                check_hub_access(repo_id, option=option)
        if args.hub_repo_id and not (merged / "config.json").is_file():
            raise InputError(f"--hub_repo_id: {merged} holds no merged model (train with --merge)")
        if not (output_dir / "run_config.yaml").is_file():
            raise InputError(f"{output_dir}: no run_config.yaml: not a train.py output folder")
        for path in refresh_cards(output_dir, args.metrics_file, args.push_adapter, args.hub_repo_id):
            logger.info("wrote %s", path)
        if args.push_adapter:
            resolved = read_run_config(output_dir / "run_config.yaml")
            push_adapter(output_dir, args.push_adapter, resolved["model"]["model_name_or_path"])
        if args.hub_repo_id:
            push_folder(merged, args.hub_repo_id)
    except Exception as e:  # bad input, no Hub, a full disk: one line naming it and the fix; a bug: its traceback
        return exit_code_of(e, lambda m: sys.stderr.write(f"export: error: {m}\n"), output_dir, (HubAccessError,))
    return 0


if __name__ == "__main__":
    sys.exit(main())
