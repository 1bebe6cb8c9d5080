"""Model cards (metadata read back with huggingface_hub) and pushes, the Hub API mocked at the boundary."""

import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

import train
from llama_squad import export
from llama_squad.models import EMBEDDED_HUB_ID

RESOLVED = {
    "model": {"model_name_or_path": "embedded", "dtype": "float32", "use_peft": True, "lora_r": 8, "lora_alpha": 16},
    "script": {"dataset_path": "data/squad_v2_dev_split"},
    "training": {"output_dir": "output/smollm2", "learning_rate": 0.0005, "max_steps": 24, "seed": 42},
}
METRICS = {"total": 30, "valid_json": 96.666667, "exact": 40.0, "f1": 45.5, "abstain_precision": None}


def card_args(**overrides) -> dict:
    args = dict(
        base_model="embedded",
        dataset_path="data/squad_v2_dev_split",
        config=RESOLVED,
        metrics=METRICS,
        train_examples=70,
        task="squad_v2",
    )
    return args | overrides


class FakeHub:
    """Stands in for huggingface_hub's HfApi, whoami and get_token: records what would be sent."""

    def __init__(self, monkeypatch):
        import huggingface_hub
        import huggingface_hub.constants

        self.calls: list[tuple] = []
        hub = self

        class FakeApi:
            def create_repo(self, repo_id, exist_ok=False, **kwargs):
                hub.calls.append(("create_repo", repo_id, exist_ok))

            def create_commit(self, repo_id, operations, commit_message, **kwargs):
                hub.calls.append(("create_commit", repo_id, operations, commit_message))
                return f"https://huggingface.co/{repo_id}/commit/1"

            def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
                hub.calls.append(("upload_folder", repo_id, folder_path, commit_message))
                return f"https://huggingface.co/{repo_id}/commit/2"

        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
        monkeypatch.setattr(huggingface_hub, "whoami", lambda token=None: {"name": "me"})

    def commits(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "create_commit"]


def test_adapter_card_metadata(tmp_path):
    path = export.write_model_card(tmp_path, export.ADAPTER, repo_id="me/smollm2-squad-lora", **card_args())
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["base_model"] == EMBEDDED_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["library_name"] == "peft" and data["base_model_relation"] == "adapter"
    assert data["datasets"] == ["rajpurkar/squad_v2"]
    assert "peft" in data["tags"] and "squad_v2" in data["tags"]
    results = {(m.metric_type, m.metric_value) for m in card.data.eval_results}
    assert results == {("exact_match", 40.0), ("f1", 45.5), ("accuracy", 96.67)}
    assert card.data.model_name == "smollm2-squad-lora"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/smollm2-squad-lora")' in card.text
    assert "| exact | 40.00 |" in card.text and "| total | 30 |" in card.text
    recipe = yaml.safe_load(card.text.split("```yaml\n")[1].split("```")[0])
    assert recipe == {"dtype": "float32", "use_peft": True, "lora_r": 8, "lora_alpha": 16, "max_steps": 24,
                      "learning_rate": 0.0005, "seed": 42}  # fmt: skip


def test_merged_card_metadata_and_no_metrics(tmp_path):
    card = ModelCard.load(export.write_model_card(tmp_path, export.MERGED, **card_args(metrics=None)))
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["base_model_relation"] == "finetune"
    assert data["base_model"] == EMBEDDED_HUB_ID
    assert "model-index" not in data and card.data.eval_results is None
    assert "AutoModelForCausalLM.from_pretrained" in card.text and "Not evaluated yet" in card.text


def test_card_of_a_local_base_leaves_base_model_out(tmp_path):
    base = tmp_path / "my-model"
    base.mkdir()
    card = ModelCard.load(export.write_model_card(tmp_path, export.ADAPTER, **card_args(base_model=str(base))))
    assert "base_model" not in card.data.to_dict()  # the Hub wants an id; the text names the folder
    assert f"`{base}` (a local model)" in card.text


def test_multiwoz_card_names_no_hub_dataset(tmp_path):
    metrics = {"jga": 12.5, "slot_f1": 70.0}
    card = ModelCard.load(
        export.write_model_card(tmp_path, export.ADAPTER, **card_args(task="multiwoz", metrics=metrics))
    )
    assert card.data.datasets is None
    assert {(m.metric_name, m.metric_value) for m in card.data.eval_results} == {
        ("Joint goal accuracy", 12.5),
        ("Slot F1", 70.0),
    }


def test_card_never_holds_nan_or_infinity(tmp_path):
    metrics = {"task": "squad_v2", "total": 30, "valid_json": 90.0, "exact": float("nan"), "f1": float("inf"),
               "HasAns_f1": float("-inf"), "NoAns_exact": 50.0}  # fmt: skip
    path = export.write_model_card(tmp_path, export.ADAPTER, **card_args(metrics=metrics))
    text = path.read_text()
    assert not re.search(r"\b(nan|-?inf(inity)?)\b", text, re.IGNORECASE)
    card = ModelCard.load(path)
    assert [(m.metric_name, m.metric_value) for m in card.data.eval_results] == [
        ("Exact match, unanswerable questions (abstention)", 50.0),
        ("Valid JSON", 90.0),
    ]
    table = card.text.split("| metric | value |\n|---|---|\n")[1].split("\n\n")[0]
    assert table == "| total | 30 |\n| valid_json | 90.00 |\n| NoAns_exact | 50.00 |"  # no task row either


def fake_adapter(
    folder: Path, base: str = "/root/.cache/llama_squad/smollm2-135m-instruct", resolved: dict = RESOLVED
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "run_config.yaml").write_text(yaml.safe_dump(resolved))
    for other in ("checkpoint-2", "eval", "merged"):
        (folder / other).mkdir()
        (folder / other / "model.safetensors").write_bytes(b"not pushed")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_push_adapter_sends_the_adapter_alone_naming_the_hub_base(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    adapter = fake_adapter(tmp_path / "out")
    export.write_model_card(adapter, export.ADAPTER, **card_args())
    url = export.push_adapter(adapter, "me/lora", "embedded")
    assert url == "https://huggingface.co/me/lora/commit/1"
    assert hub.calls[0] == ("create_repo", "me/lora", True)
    (_, repo, operations, _message) = hub.commits()[0]
    assert repo == "me/lora"
    pushed = {op.path_in_repo: op.path_or_fileobj for op in operations}
    assert sorted(pushed) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "run_config.yaml",
                              "tokenizer.json"]  # fmt: skip
    config = json.loads(pushed["adapter_config.json"])  # sent from memory, not from the file
    assert config == {"peft_type": "LORA", "base_model_name_or_path": EMBEDDED_HUB_ID}
    # the local adapter keeps the folder it trained from
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"].startswith("/root")


def test_export_cli_refreshes_the_cards_with_test_metrics_and_pushes(tmp_path, monkeypatch, tiny_dataset_dir):
    hub = FakeHub(monkeypatch)
    resolved = RESOLVED | {"script": {"dataset_path": str(tiny_dataset_dir)}}  # the task is read from the data
    adapter = fake_adapter(tmp_path / "out", resolved=resolved)
    (adapter / "merged").joinpath("config.json").write_text("{}")
    (adapter / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    argv = [str(adapter), "--push_adapter", "me/lora", "--hub_repo_id", "me/merged"]
    assert export.main(argv) == 0
    adapter_card, merged_card = ModelCard.load(adapter / "README.md"), ModelCard.load(adapter / "merged" / "README.md")
    assert adapter_card.data.library_name == "peft" and merged_card.data.library_name == "transformers"
    assert adapter_card.data.model_name == "lora" and merged_card.data.model_name == "merged"
    assert [m.metric_value for m in adapter_card.data.eval_results][:2] == [40.0, 45.5]
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit", "create_repo", "upload_folder"]
    assert hub.calls[3][1:3] == ("me/merged", str(adapter / "merged"))


@pytest.mark.parametrize(
    ("metrics", "found"),
    [
        ({"task": "multiwoz", "total": 300, "jga": 12.5, "slot_f1": 70.0, "valid_json": 0.0}, "'multiwoz'"),
        ({"total": 300, "jga": 12.5, "slot_f1": 70.0, "valid_json": 0.0}, "'multiwoz' (inferred from its keys)"),
    ],
)
def test_export_cli_refuses_the_metrics_of_another_task(tmp_path, metrics, found, capsys, tiny_dataset_dir):
    resolved = RESOLVED | {"script": {"dataset_path": str(tiny_dataset_dir)}}  # a SQuAD v2 dataset
    adapter = fake_adapter(tmp_path / "out", resolved=resolved)
    metrics_file = adapter / "eval" / "metrics.json"
    metrics_file.write_text(json.dumps(metrics))
    assert export.main([str(adapter)]) == 1
    assert capsys.readouterr().err == (
        f"export: error: {metrics_file}: scores of task {found}, but the dataset {tiny_dataset_dir} is of task "
        f"'squad_v2': score the model on it with test.py --dataset_path {tiny_dataset_dir}, or move {metrics_file} "
        "away\n"
    )
    assert not (adapter / "README.md").exists()
    # the scores of the dataset's task, with or without their task entry
    for squad in ({"task": "squad_v2", **METRICS}, METRICS):
        metrics_file.write_text(json.dumps(squad))
        assert export.main([str(adapter)]) == 0
        card = ModelCard.load(adapter / "README.md")
        assert [(m.metric_name, m.metric_value) for m in card.data.eval_results] == [
            ("Exact match", 40.0),
            ("F1", 45.5),
            ("Valid JSON", 96.67),
        ]


def test_metrics_task_is_recorded_or_inferred():
    assert export.metrics_task({"task": "multiwoz", "exact": 1.0}) == "multiwoz"
    assert export.metrics_task({"jga": 1.0, "slot_f1": 1.0}) == "multiwoz"
    assert export.metrics_task({"jga": 1.0, "exact": 1.0}) is None  # the signatures of two tasks: no telling
    assert export.metrics_task(METRICS) == "squad_v2"
    assert export.metrics_task({"total": 0}) is None


def test_export_cli_offline_fails_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    adapter = fake_adapter(tmp_path / "out")
    assert export.main([str(adapter), "--push_adapter", "me/lora"]) == 1
    assert "--push_adapter (me/lora): pushing needs the Hub, but HF_HUB_OFFLINE is set" in capsys.readouterr().err
    assert not (adapter / "README.md").exists()


def test_push_adapter_needs_a_namespace():
    with pytest.raises(export.HubAccessError, match="--push_adapter 'lora': expected USER_OR_ORG/NAME"):
        export.check_hub_access("lora", option="--push_adapter")


def test_train_push_adapter_pushes_after_training(tmp_path, monkeypatch, tiny_model_dir, tiny_dataset_dir):
    from test_training import train_argv

    hub = FakeHub(monkeypatch)
    out = tmp_path / "out"
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "1", "--save_steps", "10",
                      "--eval_strategy", "no", "--push_adapter", "me/tiny-lora")  # fmt: skip
    assert train.main(argv) == 0
    (_, repo, operations, _) = hub.commits()[0]
    assert repo == "me/tiny-lora"
    names = [op.path_in_repo for op in operations]
    assert "adapter_model.safetensors" in names and "README.md" in names and "chat_template.jinja" in names
    assert not any(n.startswith(("checkpoint", "merged")) for n in names)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.model_name == "tiny-lora"
    assert card.data.datasets == ["rajpurkar/squad_v2"]  # the task read from the dataset folder
    assert "base_model" not in card.data.to_dict()  # a local folder: no Hub id to give


def test_train_refuses_the_metrics_of_another_task_before_training(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    from test_training import train_argv

    out = tmp_path / "out"
    metrics_file = out / "eval" / "metrics.json"
    metrics_file.parent.mkdir(parents=True)
    metrics_file.write_text(json.dumps({"total": 300, "jga": 12.5, "slot_f1": 70.0}))
    argv = train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "1", "--eval_strategy", "no")
    assert train.main(argv) == 1
    assert caplog.messages[-1].endswith(
        f"{metrics_file}: scores of task 'multiwoz' (inferred from its keys), but the dataset {tiny_dataset_dir} is "
        f"of task 'squad_v2': score the model on it with test.py --dataset_path {tiny_dataset_dir}, or move "
        f"{metrics_file} away"
    )
    assert sorted(p.name for p in out.iterdir()) == ["eval"]  # nothing trained, nothing written


def test_push_adapter_without_peft_is_refused(tmp_path, caplog, tiny_model_dir, tiny_dataset_dir):
    from test_training import train_argv

    argv = train_argv(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", "--use_peft", "false",
                      "--push_adapter", "me/x")  # fmt: skip
    assert train.main(argv) == 1
    assert "--push_adapter me/x: there is no adapter without --use_peft" in caplog.text


def test_test_py_writes_its_scores_into_the_card_of_the_adapter_it_evaluated(
    tmp_path, tiny_model_dir, tiny_dataset_dir
):
    """After train.py, the card says "Not evaluated yet"; test.py on the test split puts its scores in the card's
    model-index (the abstention ones too) and its table; a folder train.py did not write keeps its card."""
    from test_training import train_argv

    import test as test_script

    out = tmp_path / "model"
    assert (
        train.main(train_argv(tiny_model_dir, tiny_dataset_dir, out, "--max_steps", "1", "--eval_strategy", "no")) == 0
    )
    assert "Not evaluated yet" in (out / "README.md").read_text()
    evaluation = out / "eval"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--adapter_path", str(out), "--dataset_path",
            str(tiny_dataset_dir), "--output_dir", str(evaluation), "--max_new_tokens", "4"]  # fmt: skip
    assert test_script.main(argv) == 0
    card = (out / "README.md").read_text()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert "Not evaluated yet" not in card and f"| exact | {metrics['exact']:.2f} |" in card
    for name in ("Exact match", "F1", "Exact match, unanswerable questions (abstention)", "Valid JSON"):
        assert f"name: {name}" in card
    assert f"name: {out.name}" in card  # the run's name, not "model"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (foreign / name).write_bytes((out / name).read_bytes())
    (foreign / "README.md").write_text("my own card\n")
    argv = [*argv[:3], str(foreign), *argv[4:-3], str(tmp_path / "eval2"), "--max_new_tokens", "4"]
    assert test_script.main(argv) == 0
    assert (foreign / "README.md").read_text() == "my own card\n"
