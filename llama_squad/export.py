"""After training: merge the adapter into the base model, write a model card, push to the Hub."""

import json
import logging
import os
from pathlib import Path

import yaml

from llama_squad.io import atomic_path

logger = logging.getLogger(__name__)


class HubAccessError(RuntimeError):
    """Pushing was asked for, but the Hub cannot be reached or no token is set."""


def check_hub_access(repo_id: str, option: str = "--hub_repo_id", token: str | None = None) -> str:
    """Fail fast (before any long work) unless ``repo_id`` can be pushed to; returns the user name.

    ``option`` is the flag that asked for the push: ``--hub_repo_id`` (ours, USER_OR_ORG/NAME) or TRL's
    ``--push_to_hub`` (whose ``--hub_model_id`` may be a bare NAME, pushed under the token's user).
    """
    from huggingface_hub import get_token, whoami
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if option == "--hub_repo_id" and "/" not in repo_id:
        raise HubAccessError(f"--hub_repo_id {repo_id!r}: expected USER_OR_ORG/NAME")
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
    base_path: str, adapter_dir: str | os.PathLike, output_dir: str | os.PathLike, dtype, tokenizer
) -> Path:
    """Load the base model in ``dtype``, merge the LoRA adapter into it and save model + tokenizer (safetensors).

    Pause tokens: the base model gets their rows before the adapter fills them, and ``pause_tokens.json`` goes with
    the merged model, which test.py then prompts as the adapter was trained."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llama_squad import pause

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    pause.grow_embeddings(base, len(tokenizer))
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_path(output_dir, is_dir=True) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        pause.save(pause.load(adapter_dir), tmp)
    logger.info("merged the adapter into %s (%s) → %s", base_path, dtype, output_dir)
    return Path(output_dir)


def model_card(base_model: str, dataset_path: str, config: dict, metrics: dict | None, train_examples: int) -> str:
    """A Hub model card (README.md): base model, data, the resolved recipe, and scores when there are some."""
    front = {"base_model": base_model, "library_name": "transformers", "tags": ["llama-squad", "trl", "sft", "lora"]}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {Path(config.get('output_dir', 'model')).name}",
        "",
        f"Fine-tuned from `{base_model}` with llama-squad (TRL SFT, LoRA) to answer from a "
        'text in JSON, `{"answer": "..."}`, and to answer `"?"` when the text holds no answer. The loss was on '
        "the answer tokens and the token that ends the assistant turn only.",
        "",
        f"Data: `{dataset_path}` ({train_examples} training examples).",
        "",
        "## Results",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("Not evaluated yet: run test.py on the test split, then summarize_results.py.")
    lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(config, sort_keys=True).strip(), "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`model_card` to ``folder/README.md``; picks up ``metrics.json`` beside the adapter if present."""
    path = Path(folder) / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(model_card(**kwargs), encoding="utf-8")
    return path


def read_metrics(output_dir: str | os.PathLike) -> dict | None:
    """Test metrics written by test.py into ``output_dir/eval/metrics.json``, if any."""
    path = Path(output_dir) / "eval" / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def push_folder(folder: str | os.PathLike, repo_id: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload llama-squad model")
    logger.info("pushed %s to %s", folder, repo_id)
    return str(commit)
