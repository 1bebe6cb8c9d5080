"""Learned pause tokens: placed and masked on six real chat templates, only their embedding rows trained beside LoRA,
saved with the adapter, merged, prompted with by test.py exactly as trained, and part of a checkpoint's shape."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_tokenization import ANSWER, MULTI_TURN, SYSTEM, TEMPLATES, USER, supervised
from test_training import train_argv

import test as test_script
import train
from llama_squad import IGNORE_INDEX, pause, resume, training
from llama_squad.pause import PauseTokens
from llama_squad.tokenization import tokenize_conversation, tokenize_prompt

# ------------------------------------------------------------------------------------------- placing and masking


@pytest.fixture(scope="module")
def load_fresh(tokenizers_dir):
    """A new tokenizer per call: adding tokens changes it."""
    from transformers import AutoTokenizer

    return lambda name: AutoTokenizer.from_pretrained(tokenizers_dir / name)


def tokenize_with_pauses(tokenizer, pauses: PauseTokens, prompt, completion) -> dict:
    prompt, completion, prefix = pauses.training_messages(prompt, completion)
    return tokenize_conversation(tokenizer, prompt, completion, assistant_prefix=prefix)


def inference_prompt(tokenizer, pauses: PauseTokens, messages) -> list[int]:
    messages, prefix = pauses.prompt_messages(messages)
    return tokenize_prompt(tokenizer, messages, assistant_prefix=prefix or None)


@pytest.mark.parametrize("position", pause.POSITIONS)
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_pauses_sit_in_the_inference_prompt_and_are_never_supervised(load_fresh, name, position):
    tokenizer = load_fresh(name)
    pauses = PauseTokens.of(3, position)
    ids = pause.add_to_tokenizer(tokenizer, pauses)
    assert len(set(ids)) == 3 and min(ids) >= len(tokenizer) - 3
    for prompt, completion in (([SYSTEM, USER], [ANSWER]), ([USER], [ANSWER]), ([SYSTEM, USER], MULTI_TURN)):
        plain = tokenize_conversation(tokenizer, prompt, completion)
        example = tokenize_with_pauses(tokenizer, pauses, prompt, completion)
        asked = inference_prompt(tokenizer, pauses, [*prompt, *completion[:-1]])
        # what generation is fed is exactly the start of the training ids, and it ends where the answer starts
        assert example["input_ids"][: len(asked)] == asked
        assert example["labels"][len(asked) - 4 : len(asked)] == [IGNORE_INDEX] * 4
        assert example["labels"][len(asked) :] == example["input_ids"][len(asked) :]
        assert [example["input_ids"].count(i) for i in ids] == [1, 1, 1]
        assert not set(ids) & set(supervised(example))
        if position == "assistant":  # the pauses are the last prompt tokens
            assert asked[-3:] == ids
        else:  # the pauses end the user message, before the assistant header
            assert asked[-3:] != ids and ids[-1] in asked
        # the same supervised text as without pauses, but for spaces (Llama-2's and Mistral's lead " " goes before
        # the pauses, unsupervised)
        assert tokenizer.decode(supervised(example)).split() == tokenizer.decode(supervised(plain)).split() or (
            tokenizer.decode(supervised(example)).replace(" ", "")
            == tokenizer.decode(supervised(plain)).replace(" ", "")
        )
        assert example["input_ids"][-1] == plain["input_ids"][-1]


def test_a_prefix_that_merges_with_the_answer_is_refused(load_fresh):
    tokenizer = load_fresh("smollm2-135m-instruct")
    answer = {"role": "assistant", "content": "Parisian"}
    with pytest.raises(ValueError, match="assistant prefix tokenizes to .* must end where a token ends"):
        tokenize_conversation(tokenizer, [USER], [answer], assistant_prefix="Pari")
    with pytest.raises(ValueError, match="does not start with its assistant prefix"):
        tokenize_conversation(tokenizer, [USER], [answer], assistant_prefix="London")


def test_pause_tokens_that_are_words_of_the_vocabulary_are_refused(load_fresh):
    tokenizer = load_fresh("smollm2-135m-instruct")
    with pytest.raises(ValueError, match=r"\['hello'\] are already words of its vocabulary"):
        pause.add_to_tokenizer(tokenizer, PauseTokens(("hello",)))
    n = len(tokenizer)
    pauses = PauseTokens.of(2)
    assert pause.add_to_tokenizer(tokenizer, pauses) == pause.add_to_tokenizer(tokenizer, pauses) == [n, n + 1]
    assert tokenizer.decode([n, 42, n + 1], skip_special_tokens=True) == tokenizer.decode([42])


# ------------------------------------------------------------------------------------------- training


def tiny_llama(tokenizer, tied: bool):
    from llama_squad.testing import random_llama

    model = random_llama(
        tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.3,
    )  # fmt: skip
    if not tied:
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 0.01)
    return model


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_only_the_pause_rows_and_the_lora_layers_train(tmp_path, smollm2_tokenizer_dir, tiny_dataset_dir, tied):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from llama_squad.config import ModelArguments, TrainConfig
    from llama_squad.tokenization import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    model = tiny_llama(tokenizer, tied)
    vocab = model.get_input_embeddings().weight.shape[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pauses = PauseTokens.of(2)
    ids = pause.prepare_model(model, tokenizer, pauses)
    assert ids == [vocab, vocab + 1] and len(tokenizer) == vocab + 2
    embedding = model.get_input_embeddings().weight
    mean = before["model.embed_tokens.weight"].mean(0)
    torch.testing.assert_close(embedding[ids], torch.stack([mean, mean]))  # start: the mean of the other rows
    assert (model.get_output_embeddings().weight is embedding) == tied

    data, _ = tokenize_dataset(
        load_from_disk(str(tiny_dataset_dir))["train"].select(range(4)), tokenizer, 256, pause=pauses
    )
    config = TrainConfig(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    peft_config = training.lora_config(ModelArguments(lora_r=4, lora_alpha=8), ids)
    trainer = training.build_trainer(model, tokenizer, config, data, None, peft_config, pauses)
    lora_before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()

    trainable = [k for k, v in trainer.model.named_parameters() if v.requires_grad]
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in trainable), trainable
    assert all(not torch.equal(v, trainer.model.get_parameter(k)) for k, v in lora_before.items())
    merged = trainer.model.merge_and_unload()
    weights = merged.state_dict()
    embed = weights["model.embed_tokens.weight"]
    assert torch.equal(embed[:vocab], before["model.embed_tokens.weight"])  # every other row bit-identical
    assert not torch.allclose(embed[ids], torch.stack([mean, mean]))  # the pause rows trained
    if tied:
        assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    else:  # the output layer is not trained: its new rows stay the mean of its rows
        assert torch.equal(weights["lm_head.weight"][:vocab], before["lm_head.weight"])
        torch.testing.assert_close(weights["lm_head.weight"][vocab], before["lm_head.weight"].mean(0))
    for key, value in before.items():
        if "embed_tokens" not in key and "lm_head" not in key:
            assert not torch.equal(value, weights[key]) or "norm" in key, key  # LoRA folded into every linear


@pytest.fixture(scope="module")
def trained_with_pauses(tmp_path_factory, tiny_model_dir, tiny_dataset_dir):
    out = tmp_path_factory.mktemp("pause_run") / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--pause_tokens", "3", "--merge")
    assert train.main(argv) == 0
    return out


def test_the_adapter_saves_the_pause_rows_and_the_merged_model_holds_them(trained_with_pauses, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = trained_with_pauses
    expected = {"tokens": ["<|pause_0|>", "<|pause_1|>", "<|pause_2|>"], "position": "assistant"}
    for folder in (out, out / "checkpoint-2", out / "checkpoint-6", out / "merged"):
        assert json.loads((folder / pause.PAUSE_FILE).read_text()) == expected, folder
        assert pause.find_in_tokenizer(AutoTokenizer.from_pretrained(folder)) == expected["tokens"], folder
    adapter = load_file(out / "adapter_model.safetensors")
    deltas = [k for k in adapter if "trainable_tokens_delta" in k]
    assert len(deltas) == 1 and adapter[deltas[0]].shape == (3, 64)
    assert not any("embed_tokens.weight" in k or "lm_head.weight" in k for k in adapter)  # no whole matrix
    assert json.loads((out / "adapter_config.json").read_text())["trainable_token_indices"] == [49152, 49153, 49154]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    embed = merged.get_input_embeddings().weight
    assert embed.shape[0] == 49155 and merged.config.vocab_size == 49155
    torch.testing.assert_close(embed[49152:], adapter[deltas[0]])
    assert torch.equal(embed[:49152], base.get_input_embeddings().weight)


def test_test_py_prompts_with_the_pauses_and_merged_answers_equal_adapter_answers(
    trained_with_pauses, tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch
):
    from llama_squad.evaluation import Answerer

    prompts = []
    prompt_ids = Answerer.prompt_ids

    def spy(self, messages, last_turn):
        ids, prefix = prompt_ids(self, messages, last_turn)
        prompts.append(ids)
        return ids, prefix

    monkeypatch.setattr(Answerer, "prompt_ids", spy)
    out = trained_with_pauses
    answers = {}
    runs = {
        "adapter": ["--model_name_or_path", str(tiny_model_dir), "--adapter_path", str(out)],
        "adapter_unmerged": ["--model_name_or_path", str(tiny_model_dir), "--adapter_path", str(out),
                             "--merge_adapter", "false"],
        "merged": ["--model_name_or_path", str(out / "merged")],
    }  # fmt: skip
    for run, model in runs.items():
        prompts.clear()
        argv = [*model, "--dataset_path", str(tiny_dataset_dir), "--output_dir", str(tmp_path / run),
                "--max_new_tokens", "8", "--limit", "6", "--batch_size", "3"]  # fmt: skip
        assert test_script.main(argv) == 0
        assert len(prompts) == 6 and all(p[-3:] == [49152, 49153, 49154] for p in prompts)
        results = pd.read_csv(tmp_path / run / "results.csv").sort_values("id")
        assert not results["raw_output"].fillna("").str.contains("pause").any()
        answers[run] = results["raw_output"].fillna("").tolist()
    assert answers["adapter"] == answers["merged"] == answers["adapter_unmerged"]


def test_a_model_whose_pause_file_is_gone_is_refused(trained_with_pauses, tiny_dataset_dir, tmp_path, caplog):
    import shutil

    merged = tmp_path / "merged"
    shutil.copytree(trained_with_pauses / "merged", merged)
    (merged / pause.PAUSE_FILE).unlink()
    argv = ["--model_name_or_path", str(merged), "--dataset_path", str(tiny_dataset_dir), "--output_dir",
            str(tmp_path / "eval"), "--limit", "2"]  # fmt: skip
    assert test_script.main(argv) == 1
    assert "holds the pause tokens ['<|pause_0|>', '<|pause_1|>', '<|pause_2|>'] but pause_tokens.json names none" in (
        caplog.text
    )


def test_resuming_with_another_pause_count_is_refused(trained_with_pauses, tiny_model_dir, tiny_dataset_dir, caplog):
    out = trained_with_pauses
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--pause_tokens", "5", "--max_steps", "8")
    assert train.main(argv) == 1
    assert "checkpoint-6 was trained with other model options (--pause_tokens 3 then, 5 now)" in caplog.text
    caplog.clear()
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "8")  # no --pause_tokens: 0
    assert train.main(argv) == 1
    assert "--pause_tokens 3 then, 0 now" in caplog.text


def test_an_old_run_config_without_pause_options_resumes(tmp_path):
    import yaml

    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig

    resolved = resume.resolved_config(ModelArguments(), ScriptArguments(), TrainConfig(output_dir=str(tmp_path)))
    old = json.loads(json.dumps(resolved, default=str))
    for key in ("pause_tokens", "pause_position"):
        del old["model"][key]
    (tmp_path / resume.RUN_CONFIG).write_text(yaml.safe_dump(old))
    resume.check_resume_config(resolved, str(tmp_path), "checkpoint-1")  # no error
    resolved["model"]["pause_tokens"] = 2
    with pytest.raises(Exception, match="--pause_tokens 0 then, 2 now"):
        resume.check_resume_config(resolved, str(tmp_path), "checkpoint-1")


def test_bad_pause_options_are_named(tmp_path):
    from llama_squad.config import ModelArguments, ScriptArguments, TrainConfig
    from llama_squad.files import InputError

    with pytest.raises(InputError) as error:
        training.validate(
            ModelArguments(pause_tokens=-1, pause_position="system"),
            ScriptArguments(dataset_path=str(tmp_path)),
            TrainConfig(output_dir=str(tmp_path)),
        )
    assert "--pause_tokens -1" in str(error.value) and "--pause_position 'system'" in str(error.value)
