"""Resolve and load models: Hub ids, local folders and the embedded model's cache folder; tokenizers and adapters."""

import dataclasses
import importlib.util
import json
import logging
import os
from importlib import metadata
from pathlib import Path

import torch

from llama_squad.embedded import (
    EMBEDDED_HUB_ID,
    ModelError,
    embedded_gguf_path,
    embedded_model_path,
    gguf_source,
    is_embedded,
)
from llama_squad.files import fingerprint_files

logger = logging.getLogger(__name__)

# The values of --dtype ("auto": see resolve_dtype).
DTYPES = ("auto", "bfloat16", "float16", "float32")
# Tokens that exist only to pad, in the order they are tried when a tokenizer has no pad token.
PAD_TOKEN_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def hub_model_id(model_name_or_path: str) -> str | None:
    """The Hub id of a base model, for model cards and pushed adapters: the id itself, the model the embedded GGUF
    was made from (``EMBEDDED_HUB_ID``), or None for a local folder (whose origin is unknown)."""
    if is_embedded(model_name_or_path):
        return EMBEDDED_HUB_ID
    path = Path(model_name_or_path).expanduser()
    if path.exists() or model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1:
        return None
    return model_name_or_path


def resolve_model_path(model_name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The folder or Hub id to load ``model_name_or_path`` from.

    Hub ids and folders come back unchanged; the embedded model ("embedded") is its cached folder, converted on first
    use (see :func:`llama_squad.embedded.embedded_model_path`).
    """
    if not is_embedded(model_name_or_path):
        return model_name_or_path
    return embedded_model_path(cache_dir)


def check_model_source(model_name_or_path: str, option: str = "--model_name_or_path", revision: str = "main") -> None:
    """Fail before any loading when ``model_name_or_path`` can be neither a model folder nor a Hub id.

    The embedded model needs its package; a folder needs a ``config.json``; a path that does not exist, or a Hub id
    while ``HF_HUB_OFFLINE`` is set and the id (at ``revision``) is not in the local Hub cache, is named with the fix.
    A ``revision`` other than main is for Hub ids only.
    """
    if revision != "main" and (is_embedded(model_name_or_path) or Path(model_name_or_path).expanduser().exists()):
        what = "the embedded model" if is_embedded(model_name_or_path) else "a local path"
        raise ModelError(
            f"--model_revision {revision}: a revision of a Hub model, but {option} {model_name_or_path} is {what}; "
            "leave --model_revision out"
        )
    if is_embedded(model_name_or_path):
        embedded_gguf_path()
        return
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            hint = (
                " (it is a LoRA adapter: pass it as --adapter_path)"
                if (path / "adapter_config.json").is_file()
                else ""
            )
            raise ModelError(f"{option} {model_name_or_path}: a folder without config.json, not a model{hint}")
        from llama_squad.checkpoints import file_problem

        for weights in sorted(path.glob("*.safetensors")):
            problem = file_problem(weights)
            if problem:
                raise ModelError(
                    f"{option} {model_name_or_path}: {problem}: the model's weights are incomplete (a download or "
                    "copy cut short); download or copy the model again"
                )
        return
    if path.exists():
        raise ModelError(f"{option} {model_name_or_path}: a file, not a model folder or a Hub id")
    looks_local = model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1
    if looks_local:
        raise ModelError(f"{option} {model_name_or_path}: no such folder (nor a Hub id: [NAMESPACE/]NAME)")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    cached = try_to_load_from_cache(model_name_or_path, "config.json", revision=revision)
    at = f" at revision {revision}" if revision != "main" else ""
    if HF_HUB_OFFLINE and not isinstance(cached, str):
        raise ModelError(
            f"{option} {model_name_or_path}: no such folder, and this Hub model{at} is not in the local cache while "
            "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to download it, or pass a model folder"
        )
    unreachable = None if isinstance(cached, str) else hub_unreachable()
    if unreachable:
        raise ModelError(
            f"{option} {model_name_or_path}: no such folder, this Hub model{at} is not in the local cache, and the "
            f"Hub cannot be reached ({unreachable}): pass a model folder or `embedded`, or download it where there is "
            "a network (hf download) and run with HF_HUB_OFFLINE=1"
        )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub (``HF_ENDPOINT``) cannot be reached, asked once in a few seconds (a connection to its host), or
    None when it can: a download without a network would otherwise retry for a minute before it fails."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub.constants import ENDPOINT

    url = urlparse(ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{url.hostname}:{port}: {e.strerror or e}"


def model_fingerprint(model_name_or_path: str, revision: str = "main") -> str:
    """What identifies a model's weights for a results record: the GGUF's package and size for the embedded model,
    a sampled content hash of config and weights for a folder, the id (and a revision other than main) for a Hub
    model."""
    if is_embedded(model_name_or_path):
        return "embedded:" + json.dumps(gguf_source(embedded_gguf_path()), sort_keys=True)
    path = Path(model_name_or_path).expanduser()
    if not path.is_dir():
        return f"hub:{model_name_or_path}" + (f"@{revision}" if revision != "main" else "")
    files = [p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES + ("config.json",))]
    return fingerprint_files(files, sample_bytes=1 << 22)


def choose_pad_token(tokenizer) -> str:
    """The token to pad with when ``tokenizer`` has none.

    In order: a token that exists only to pad (``PAD_TOKEN_CANDIDATES``, e.g. Llama-3.1's
    ``<|finetune_right_pad_id|>``); the unknown token if it differs from eos (Llama-2's ``<unk>``, SmolLM2's
    ``<|endoftext|>``); else eos. A pad token distinct from eos keeps code that masks ``ids == pad_id`` from also
    masking the real end-of-turn token.
    """
    vocab = tokenizer.get_vocab()
    for candidate in PAD_TOKEN_CANDIDATES:
        if candidate in vocab:
            return candidate
    if tokenizer.unk_token is not None and tokenizer.unk_token != tokenizer.eos_token:
        return tokenizer.unk_token
    if tokenizer.eos_token is None:
        raise ModelError(f"{tokenizer.name_or_path}: the tokenizer has no pad, unk or eos token to pad with")
    return tokenizer.eos_token


def load_tokenizer(
    path: str | os.PathLike, *, trust_remote_code: bool = False, padding_side: str = "right", revision: str = "main"
):
    """The tokenizer at ``path`` (Hub id or folder), with a pad token (``choose_pad_token``) if it had none."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, padding_side=padding_side, revision=revision
        )
    except OSError as e:  # not found, not reachable, gated: transformers says which
        raise ModelError(f"{path}: cannot load its tokenizer ({str(e).strip().splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = choose_pad_token(tokenizer)
        logger.info("%s has no pad token: padding with %r (id %d)", path, tokenizer.pad_token, tokenizer.pad_token_id)
    return tokenizer


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``torch.dtype`` for "bfloat16", "float16", "float32", or "auto": bfloat16 on CUDA GPUs that support it,
    float16 on other CUDA GPUs, float32 on CPU."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ModelError(f"--dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def quantization_name(options) -> str | None:
    """The quantization ``options`` ask for (``--load_in_4bit`` / ``--load_in_8bit``), for logs and results records:
    None, "8bit", "4bit" (NF4 with double quantization, QLoRA's), or the other 4-bit kinds by name ("4bit fp4")."""
    if options.load_in_8bit:
        return "8bit"
    if not options.load_in_4bit:
        return None
    if options.bnb_4bit_quant_type == "nf4" and options.use_bnb_nested_quant:
        return "4bit"
    return f"4bit {options.bnb_4bit_quant_type}" + (" double quant" if options.use_bnb_nested_quant else "")


def quantization_config(options, sharded: bool = False):
    """The ``BitsAndBytesConfig`` of ``options`` (ModelArguments or ModelLoadingArguments), None without
    ``--load_in_4bit`` or ``--load_in_8bit``: TRL's (``trl.get_quantization_config``), computing in the resolved
    ``--dtype``. By default 4bit is NF4 with double quantization (QLoRA's); 8bit is LLM.int8().

    ``sharded`` (FSDP or DeepSpeed ZeRO-3 shard the parameters): the 4-bit weights are stored packed in the model's
    dtype (``bnb_4bit_quant_storage``) rather than uint8, since those engines shard floating-point tensors only, and
    the model must then be loaded in that same dtype.

    Without CUDA, recent bitsandbytes releases (0.50 is tested) quantize on the CPU: it works, saves memory and is
    slower than float32, so it suits tests more than training. Releases that cannot fail here, before loading.
    """
    from trl import get_quantization_config

    if not (options.load_in_4bit or options.load_in_8bit):
        return None
    if options.load_in_4bit and options.load_in_8bit:
        raise ModelError("--load_in_4bit and --load_in_8bit: choose one (4bit for QLoRA)")
    flag = "--load_in_4bit" if options.load_in_4bit else "--load_in_8bit"
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"{flag} needs bitsandbytes: pip install bitsandbytes")
    if not torch.cuda.is_available():
        _check_cpu_quantization(flag)
        logger.warning("%s without CUDA: bitsandbytes runs on the CPU, slower than float32", flag)
    dtype = resolve_dtype(options.dtype)
    storage = options.bnb_4bit_quant_storage
    if sharded and options.load_in_4bit:
        if storage is not None and getattr(torch, storage, None) != dtype:
            raise ModelError(
                f"--bnb_4bit_quant_storage {storage} under FSDP or ZeRO-3: the 4-bit weights must be stored in the "
                f"model's dtype ({str(dtype).removeprefix('torch.')}), as those engines shard one dtype; leave the "
                "option out"
            )
        storage = dtype
    return get_quantization_config(dataclasses.replace(options, dtype=dtype, bnb_4bit_quant_storage=storage))


def _check_cpu_quantization(flag: str) -> None:
    """Quantize a small tensor on the CPU, or say why ``flag`` (--load_in_4bit, --load_in_8bit) cannot work here."""
    weight = torch.randn(64, 64)
    try:
        import bitsandbytes.functional as F

        if flag == "--load_in_4bit":
            F.quantize_4bit(weight, quant_type="nf4")
        else:
            F.int8_vectorwise_quant(weight.half())
    except Exception as e:  # RuntimeError, NotImplementedError, missing native library: all mean "no CPU support"
        raise ModelError(
            f"{flag}: this bitsandbytes ({metadata.version('bitsandbytes')}) cannot quantize without a CUDA GPU "
            f"({type(e).__name__}: {e}); drop {flag}, run on a CUDA GPU, or upgrade bitsandbytes"
        ) from None


def allow_cpu_inference_kernel(model, allowed: bool) -> int:
    """Whether bitsandbytes may repack ``model``'s 4-bit layers for its CPU inference kernel (where the CPU has
    AVX512-BF16); returns how many layers this applies to (0: not a 4-bit model, or a bitsandbytes without it).

    bitsandbytes 0.50 repacks a ``Linear4bit``'s weight, for good, the first time the layer runs in eval mode on an
    input that needs no gradient (a validation step), its absmax scales rounded to bfloat16, for a kernel that has no
    backward: a QLoRA run that validates would then train with no gradient through its 4-bit layers, without an error
    (a tiny Llama's first-layer LoRA gradients came out 13x smaller; grad norm 5.3 fell to 0.4). A model that may be
    trained keeps the dequantize-then-matmul path, which has a backward; a model loaded only to answer may use the
    kernel (2x faster generation on SmolLM2 here).
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    if allowed and layers:
        from bitsandbytes.functional import has_avx512bf16

        allowed = has_avx512bf16()
    for layer in layers:
        layer.support_avx512bf16_for_cpu = allowed
    return len(layers)


def load_model(
    path: str | os.PathLike,
    options,
    *,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    sharded: bool = False,
):
    """``AutoModelForCausalLM`` from ``path`` (a folder or Hub id, see ``resolve_model_path``) as ``options`` say
    (ModelArguments or ModelLoadingArguments): in ``dtype`` (see ``resolve_dtype``), at ``model_revision``, with
    ``attn_implementation``, quantized with ``load_in_4bit`` or ``load_in_8bit`` (see ``quantization_config``).

    A quantized model without a ``device_map`` goes whole onto this process's GPU (``LOCAL_RANK``), or the CPU;
    unless ``sharded`` (FSDP or DeepSpeed ZeRO-3 will shard it): then it is loaded without a device map, the engine
    placing its shards, and stores its 4-bit weights in its dtype (see ``quantization_config``). On a CPU a 4-bit
    model keeps the path of bitsandbytes that has a backward, even in eval mode (see ``allow_cpu_inference_kernel``).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(options.dtype)
    kwargs = {}
    quantization = quantization_config(options, sharded=sharded)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if device_map is None and not sharded:
            device_map = {"": int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            revision=options.model_revision,
            **kwargs,
        )
    except OSError as e:  # not found, not reachable, missing weight files
        raise ModelError(f"{path}: cannot load the model ({str(e).strip().splitlines()[0]})") from None
    if quantization is not None:
        allow_cpu_inference_kernel(model, False)  # a model that may be trained (see the function)
    quantized = f", {quantization_name(options)}" if quantization is not None else ""
    size = model.num_parameters() / 1e6
    dtype_name = str(torch_dtype).removeprefix("torch.")
    logger.info("loaded %s: %.0fM parameters, %s%s on %s", path, size, dtype_name, quantized, model.device)
    return model


def load_for_inference(
    options,
    *,
    adapter_path: str | os.PathLike | None = None,
    merge_adapter: bool = True,
    device_map: str | dict | None = None,
):
    """``(model, tokenizer)`` ready to generate: the model ``options`` name and say how to load (ModelLoadingArguments:
    see ``load_model``; on the GPU when there is one), with the LoRA adapter at ``adapter_path`` applied, and the
    adapter folder's tokenizer (train.py saves it there), left-padded. Where that tokenizer holds tokens training
    added (pause tokens), the model first gets their rows, which the adapter fills.

    With ``merge_adapter`` the adapter is folded into the weights (W + BA), so that generating costs what the base
    model costs instead of two extra matmuls per adapted layer; the answers are the same up to rounding. A quantized
    model keeps the adapter beside its 4/8-bit weights (merging into them would round the adapter away).
    ``device_map`` places the model (default: ``"auto"`` with CUDA, the CPU without); each process of a sharded
    evaluation passes its own device."""
    if adapter_path is not None:
        from llama_squad.adapters import check_adapter

        check_adapter(adapter_path)
    path = resolve_model_path(options.model_name_or_path, cache_dir=options.model_cache_dir)
    has_tokenizer = adapter_path is not None and (Path(adapter_path) / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(
        adapter_path if has_tokenizer else path,
        trust_remote_code=options.trust_remote_code,
        padding_side="left",
        revision="main" if has_tokenizer else options.model_revision,
    )
    if device_map is None and torch.cuda.is_available():  # one process: the model spread over every GPU it needs
        device_map = "auto"
    model = load_model(path, options, trust_remote_code=options.trust_remote_code, device_map=device_map)
    allow_cpu_inference_kernel(model, True)  # never trained here: bitsandbytes' own choice again
    if adapter_path is not None:
        from peft import PeftModel

        from llama_squad.pause import grow_embeddings

        grow_embeddings(model, len(tokenizer))  # the adapter's tokenizer added tokens (pause tokens): their rows
        model = PeftModel.from_pretrained(model, str(adapter_path))
        if merge_adapter and not quantization_name(options):
            model = model.merge_and_unload()
            logger.info("applied the adapter %s (merged into the weights)", adapter_path)
        else:
            logger.info("applied the adapter %s", adapter_path)
    model.eval()
    return model, tokenizer
