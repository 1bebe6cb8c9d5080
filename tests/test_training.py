"""train.py on a tiny random Llama with a real tokenizer: outputs, LoRA-only updates, resume, merge, recipes."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from llama_squad import resume, training
from llama_squad.files import InputError
from llama_squad.stability import add_fp16_overflow_guard

REPO = Path(__file__).resolve().parents[1]


def train_argv(model_dir, data_dir, out, *extra):
    return [
        "--model_name_or_path", str(model_dir), "--dataset_path", str(data_dir), "--output_dir", str(out),
        "--max_steps", "6", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--learning_rate", "5e-3", "--warmup_steps", "0", "--logging_steps", "1", "--save_steps", "2",
        "--eval_steps", "3", "--max_length", "256", "--lora_r", "4", "--lora_alpha", "8", "--report_to", "none",
        "--seed", "0", "--dataloader_num_workers", "0", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path_factory.mktemp("run") / "out"
    assert train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, "--merge")) == 0
    return out


def test_outputs_of_a_run(trained, tiny_model_dir):
    from transformers import AutoTokenizer

    for name in ("adapter_config.json", "adapter_model.safetensors", "run_config.yaml", "README.md"):
        assert (trained / name).exists(), name
    assert (trained / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        AutoTokenizer.from_pretrained(trained).chat_template
        == AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    )
    config = yaml.safe_load((trained / "run_config.yaml").read_text())
    assert config["model"]["lora_r"] == 4 and config["training"]["max_steps"] == 6
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert any("eval_loss" in entry for entry in state["log_history"])
    assert (trained / "merged" / "model.safetensors").exists() and (trained / "merged" / "README.md").exists()


@pytest.mark.parametrize("layout", ["written now", "written before"])
def test_train_and_test_without_a_validation_split(layout, tmp_path, caplog, tiny_model_dir):
    """--validation_fraction 0 leaves the validation split out; a folder of older versions holds it empty, which
    datasets.load_from_disk cannot read (IndexError): both train without validation loss and answer --split test."""
    from conftest import write_squad
    from datasets import load_from_disk

    import create_dataset
    import test as test_script
    from llama_squad.cli import parse_dataclasses
    from llama_squad.evaluation import load_examples
    from llama_squad.tasks import squad_v2

    data = tmp_path / "data"
    argv = ["--task", "squad_v2", "--train_file", str(write_squad(tmp_path / "s.json")), "--test_articles", "4:6",
            "--validation_fraction", "0", "--output_dir", str(data)]  # fmt: skip
    if layout == "written now":
        assert create_dataset.main(argv) == 0
        assert json.loads((data / "dataset_dict.json").read_text()) == {"splits": ["train", "test"]}
        assert not (data / "validation").exists()
        assert {name: len(split) for name, split in load_from_disk(str(data)).items()} == {"train": 16, "test": 8}
    else:  # what create_dataset.py saved before: the DatasetDict of build_dataset, its validation split empty
        (args,) = parse_dataclasses([squad_v2.Arguments], argv[2:])
        built = squad_v2.build_dataset(args)
        assert len(built["validation"]) == 0
        built.save_to_disk(str(data))
        with pytest.raises(IndexError):
            load_from_disk(str(data))
    assert [ex["id"] for ex in load_examples(str(data), "test", 2)] == ["a4q0", "a4q1"]
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert train.main(train_argv(tiny_model_dir, data, out, "--max_steps", "2", "--save_steps", "10")) == 0
    assert "training on 16 examples, validating on 0" in caplog.text
    assert "no validation split: validation loss is off" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and not any("eval_loss" in entry for entry in state["log_history"])
    caplog.clear()
    eval_argv = ["--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(data), "--output_dir",
                 str(tmp_path / "eval"), "--split", "validation"]  # fmt: skip
    assert test_script.main(eval_argv) == 1
    assert caplog.messages[-1] == f"{data}: no split 'validation' (it has train, test): pick one with --split"


def test_merged_logits_equal_base_plus_adapter(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 42, 4242, 77, 900, 12]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
        adapted = PeftModel.from_pretrained(base, trained).eval()
        adapted_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(trained / "merged", dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-4), "the adapter changed nothing"
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-4, rtol=1e-4)


def test_lora_lowers_the_loss_and_leaves_base_weights_alone(tmp_path, tiny_model_dir, tiny_dataset_dir):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llama_squad.config import ModelArguments, TrainConfig
    from llama_squad.tokenization import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    train_split = load_from_disk(str(tiny_dataset_dir))["train"].select(range(4))
    batch, _ = tokenize_dataset(train_split, tokenizer, 256)
    repeated = batch.select([0, 1, 2, 3] * 10)  # the same batch of 4, ten times
    config = TrainConfig(
        output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
        warmup_steps=0, lr_scheduler_type="constant", logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", shuffle_dataset=False, disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = training.build_trainer(
        model, tokenizer, config, repeated, None, training.lora_config(ModelArguments(lora_r=4, lora_alpha=8))
    )
    lora_before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0], losses
    lora_after = dict(trainer.model.named_parameters())
    assert lora_before and all(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before if "lora_B" in k)
    base_after = trainer.model.get_base_model().state_dict()
    for key, value in base_before.items():
        peft_key = next(k for k in (key, key.replace(".weight", ".base_layer.weight")) if k in base_after)
        assert torch.equal(value, base_after[peft_key]), key


class Crash(Exception):
    pass


def test_a_killed_run_resumes_and_finishes_with_the_same_steps(
    tmp_path, tiny_model_dir, tiny_dataset_dir, monkeypatch, caplog
):
    from transformers import TrainerCallback

    class CrashAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise Crash("simulated crash after step 3")

    build = training.build_trainer

    def crashing_build(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(CrashAtStep3())
        return trainer

    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out)
    monkeypatch.setattr(training, "build_trainer", crashing_build)
    with pytest.raises(Crash):
        train.main(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(training, "build_trainer", build)
    assert train.main(argv) == 0
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert [e["step"] for e in state["log_history"] if "loss" in e][-3:] == [4, 5, 6]


def test_fp16_overflow_guard_clamps_infinite_hidden_states():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.float16)
    seen = []
    handles = add_fp16_overflow_guard(model)
    assert len(handles) == 2
    model.model.layers[1].input_layernorm.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    model.model.layers[0].register_forward_hook(
        lambda m, args, out: (
            (out[0].fill_(float("inf")), *out[1:]) if isinstance(out, tuple) else out.fill_(float("inf"))
        )
    )
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert seen and torch.isfinite(seen[0]).all()
    assert seen[0].max().item() == torch.finfo(torch.float16).max
    with pytest.raises(ValueError, match="no '\\*input_layernorm' modules"):
        add_fp16_overflow_guard(torch.nn.Linear(2, 2))


def test_options_are_checked_together(tmp_path):
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    with pytest.raises(InputError) as error:
        training.validate(
            ModelArguments(load_in_4bit=True, use_peft=False, fp16_overflow_guard=True, lora_task_type="SEQ_CLS"),
            ScriptArguments(dataset_path=str(tmp_path / "nothing")),
            TrainConfig(output_dir=str(tmp_path), max_length=None),
        )
    message = str(error.value)
    for flag in ("--dataset_path", "--load_in_4bit needs --use_peft", "--max_length", "--fp16_overflow_guard",
                 "--lora_task_type SEQ_CLS"):  # fmt: skip
        assert flag in message


def test_lora_is_trls_with_our_defaults():
    """TRL's get_peft_config on ModelArguments: LoRA on all linear layers; one module name stays a list (PEFT reads a
    string as a pattern over whole module names); pause-token rows are added to it."""
    from llama_squad.config import ModelArguments

    config = training.lora_config(ModelArguments())
    assert (config.task_type, config.r, config.lora_alpha, config.lora_dropout, config.bias) == (
        "CAUSAL_LM", 16, 32, 0.05, "none"
    )  # fmt: skip
    assert (config.target_modules, config.trainable_token_indices) == ("all-linear", None)
    config = training.lora_config(ModelArguments(lora_target_modules=["q_proj"], use_rslora=True), [50, 51])
    assert (config.target_modules, config.use_rslora, config.trainable_token_indices) == ({"q_proj"}, True, [50, 51])


@pytest.mark.parametrize("argv", [["--quantization", "4bit"], ["--quantization=8bit"], ["recipe"]])
def test_the_replaced_quantization_option_names_its_replacement(tmp_path, capsys, argv):
    from llama_squad.cli import parse_dataclasses
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    if argv == ["recipe"]:
        path = tmp_path / "old.yaml"
        path.write_text("quantization: 4bit\nlora_r: 8\n")
        argv = ["--config", str(path)]
    with pytest.raises(SystemExit) as exit:
        parse_dataclasses([ModelArguments, ScriptArguments, TrainConfig], argv)
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "quantization: replaced by TRL's load_in_4bit" in error
    assert "pass --load_in_4bit or --load_in_8bit" in error


def test_a_run_config_from_before_load_in_4bit_resumes_with_it(tmp_path):
    """run_config.yaml of a QLoRA run recorded ``quantization: 4bit`` and ``lora_target_modules: [all-linear]``: the
    same run now is --load_in_4bit, with TRL's ``all-linear``; without --load_in_4bit it is another model."""
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    def resolved(**model):
        return resume.resolved_config(
            ModelArguments(**model), ScriptArguments(), TrainConfig(output_dir=str(tmp_path))
        )

    old = json.loads(json.dumps(resolved(), default=str))
    for key in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "model_revision"):
        del old["model"][key]
    old["model"] |= {"quantization": "4bit", "lora_target_modules": ["all-linear"]}
    old["script"]["model_cache_dir"] = old["model"].pop("model_cache_dir")
    (tmp_path / resume.RUN_CONFIG).write_text(yaml.safe_dump(old))
    resume.check_resume_config(resolved(load_in_4bit=True), str(tmp_path), "checkpoint-1")  # no error
    with pytest.raises(InputError, match="--load_in_4bit True then, False now"):
        resume.check_resume_config(resolved(), str(tmp_path), "checkpoint-1")
    with pytest.raises(InputError, match="--use_bnb_nested_quant True then, False now"):
        resume.check_resume_config(resolved(load_in_4bit=True, use_bnb_nested_quant=False), str(tmp_path), "c-1")


def test_max_train_examples_is_a_seeded_sample_across_the_split(tiny_dataset_dir, smollm2_tokenizer_dir):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from llama_squad.config import ScriptArguments

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    args = ScriptArguments(dataset_path=str(tiny_dataset_dir), max_train_examples=6, max_eval_examples=None)
    first, _ = training.load_training_data(args, tokenizer, 512, seed=1)
    again, _ = training.load_training_data(args, tokenizer, 512, seed=1)
    other, _ = training.load_training_data(args, tokenizer, 512, seed=2)
    assert len(first) == 6 and first["input_ids"] == again["input_ids"]
    assert first["input_ids"] != other["input_ids"]
    # the split is stored article by article (Alder0 x4, Alder1 x4, ...): its first 6 rows come from 2 articles
    towns = {
        t for ids in first["input_ids"] for t in ("Alder0", "Alder1", "Alder2", "Alder3") if t in tokenizer.decode(ids)
    }
    in_order = load_from_disk(tiny_dataset_dir)["train"]
    assert len(towns) > len(set(in_order["title"][:6])) == 2


@pytest.mark.parametrize(
    "push",
    [["--hub_repo_id", "me/model"], ["--push_to_hub", "true"], ["--push_adapter", "me/adapter"]],
    ids=lambda p: p[0],
)
def test_push_without_token_or_offline_fails_before_any_work(
    tmp_path, monkeypatch, caplog, tiny_model_dir, tiny_dataset_dir, push
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", *push)
    assert train.main(argv) == 1
    assert f"{push[0]} (" in caplog.text and "HF_HUB_OFFLINE is set" in caplog.text
    assert not (tmp_path / "out").exists()


def recipe_types(path: Path):
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig
    from llama_squad.tasks import get_task

    if path.name.startswith("dataset_"):
        return [get_task(yaml.safe_load(path.read_text())["task"]).Arguments]
    return [ModelArguments, ScriptArguments, TrainConfig]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path):
    from llama_squad.cli import parse_dataclasses

    types = recipe_types(path)
    extra = [] if path.name.startswith("dataset_") else ["--use_cpu", "true"]  # GPU recipes are parsed on CPU here
    parsed = parse_dataclasses(types, ["--config", str(path), *extra])
    values = yaml.safe_load(path.read_text())
    fields = {k: v for obj in parsed for k, v in vars(obj).items()}
    for key, value in values.items():
        assert key in fields, f"{path.name}: {key} is not an option"
        if key not in ("report_to", "lora_target_modules", "optim", "lr_scheduler_type", "eval_strategy"):
            assert fields[key] == value, key


def test_unknown_recipe_keys_are_rejected(tmp_path, capsys):
    from llama_squad.cli import parse_dataclasses
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    path = tmp_path / "bad.yaml"
    path.write_text("lora_r: 8\nlearnig_rate: 1.0e-4\n")
    with pytest.raises(SystemExit) as exit:
        parse_dataclasses([ModelArguments, ScriptArguments, TrainConfig], ["--config", str(path)])
    assert exit.value.code == 2 and "learnig_rate" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train.py", "test.py", "create_dataset.py", "summarize_results.py"])
def test_scripts_help_exits_0(script):
    argv = [sys.executable, str(REPO / script), "--help"]
    if script == "create_dataset.py":
        argv[2:2] = ["--task", "squad_v2"]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


TRAIN_RECIPES = sorted(p for p in (REPO / "configs").glob("*.yaml") if not p.name.startswith("dataset_"))


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=lambda p: p.name)
def test_every_training_recipe_runs_main(path, tmp_path, tiny_model_dir, tiny_dataset_dir):
    """train.main() on each shipped recipe, one step, with the tiny model and data in place of the recipe's (and
    float32 instead of bfloat16 where this machine has none): the recipe's own LoRA, quantization, optimizer and
    schedule options go through the real script."""
    out = tmp_path / "out"
    argv = ["--config", str(path), "--model_name_or_path", str(tiny_model_dir), "--dataset_path",
            str(tiny_dataset_dir), "--output_dir", str(out), "--max_steps", "1", "--save_strategy", "no",
            "--eval_strategy", "no", "--merge", "false", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
    if yaml.safe_load(path.read_text()).get("bf16") and not (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    ):
        argv += ["--bf16", "false"]
    assert train.main(argv) == 0
    assert (out / "adapter_model.safetensors").exists()
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    recipe = yaml.safe_load(path.read_text())
    for key in ("lora_r", "lora_alpha", "load_in_4bit"):
        if key in recipe:
            assert saved["model"][key] == recipe[key], key
