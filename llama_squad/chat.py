"""Ask a tuned model questions in the terminal or on a Gradio page: the training data's prompts, test.py's answers.

    python -m llama_squad.chat --force_answer                                     # the embedded model alone
    python -m llama_squad.chat --adapter_path demo_output/squad_v2/model          # make demo's SQuAD adapter
    python -m llama_squad.chat --adapter_path demo_output/multiwoz/model          # its MultiWOZ one: slots
    python -m llama_squad.chat --adapter_path demo_output/squad_v2/model --app    # a page on http://127.0.0.1:7860

In the terminal: paste a context (a dialogue for multiwoz), blank lines and all, and end it with a line holding
only "."; then ask questions about it (slot names for multiwoz), one a line; an empty line starts a new context;
exit, quit or Ctrl-D leaves. The page (--app; pip install -e ".[chat]") has a tab per task the model was trained
for (every task where its folder holds no record of it): Enter asks.

The prompt is built by the task, as create_dataset.py builds it (give the same --system_prompt and --prompt as the
dataset the model was trained on), and answered by test.py's model loading and Generator: the same question gets
test.py's answer (greedy). Tokens are shown as they come.
"""

# ~470 lines on purpose: the terminal and the page are two faces of one Chat (the same prompts, loading and
# answers); apart they would share every name.

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from llama_squad.answers import parse_json_answer
from llama_squad.config import ModelLoadingArguments
from llama_squad.evaluation.answering import ANSWER_PREFIX, Answerer, load_answerer, start_conversation
from llama_squad.generation import GenerationOptions
from llama_squad.tasks import all_tasks, get_task, task_names
from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT

logger = logging.getLogger(__name__)

UNREADABLE_TEXT = "(no answer could be read from the model's output)"
END_OF_TEXT = "."  # the terminal: a line holding only this ends a context (a text of several paragraphs is read whole)
LEAVE_WORDS = ("exit", "quit")  # the terminal: a line holding only one of these leaves


def task_option_choices(name: str) -> tuple[str, ...]:
    """The values the tasks' ``create_dataset.py`` option ``name`` takes (the chat's --prompt is their --prompt)."""
    choices: list[str] = []
    for task in all_tasks():
        for option in fields(task.Arguments):
            if option.name == name:
                choices += [c for c in option.metadata.get("choices", ()) if c not in choices]
    return tuple(choices)


@dataclass
class ChatArguments:
    """Which adapter answers (the model: --model_name_or_path and the other loading options, as in train.py), how its
    prompts are built, and where the page is served."""

    adapter_path: str | None = field(
        default=None,
        metadata={
            "help": "A LoRA adapter folder (train.py's output_dir, or a checkpoint-N in it) to apply to the model "
            "(none: the model answers alone)."
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": "The task the terminal asks (a context, then questions; or a dialogue, then slots). Default: the "
            "one the model was trained for (as its folder records it), else the first. The page has a tab per task "
            "the model was trained for.",
            "choices": task_names(),
        },
    )
    prompt: str = field(
        default="single_turn",
        metadata={
            "help": "The SQuAD prompt style of the training data (create_dataset.py's --prompt).",
            "choices": task_option_choices("prompt"),
        },
    )
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System message, as create_dataset.py's --system_prompt (empty: none)."},
    )
    list_categorical_values: bool = field(
        default=False, metadata={"help": "MultiWOZ: name the allowed values of categorical slots, as in the data."}
    )
    merge_adapter: bool = field(
        default=True, metadata={"help": "Fold the adapter into the weights (as test.py does by default)."}
    )
    allow_base_mismatch: bool = field(
        default=False,
        metadata={
            "help": "Apply --adapter_path even to another base model than the one it was trained on (a warning "
            "instead of an error)."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for sampling."})
    app: bool = field(default=False, metadata={"help": "Serve a Gradio page instead of asking in the terminal."})
    server_name: str = field(default="127.0.0.1", metadata={"help": "--app: the address to listen on."})
    server_port: int = field(default=7860, metadata={"help": "--app: the port to listen on."})


@dataclass(frozen=True)
class Answer:
    """A model's answer to one question: what it wrote, and the answer read from it."""

    no_answer: str  # what an abstention means, in words (the task's ChatForm.no_answer)
    raw: str
    answer: str | None  # None: nothing could be read
    valid_json: bool
    abstained: bool  # answered "?"

    @property
    def shown(self) -> str:
        """The answer for a person: the value, "no answer" in words, or a note that the output was unreadable."""
        if self.abstained:
            return self.no_answer
        if self.answer is None:
            return UNREADABLE_TEXT
        return self.answer


class Chat:
    """Builds the task's prompt for a question and answers it with an :class:`Answerer`, streaming the tokens."""

    def __init__(
        self,
        answerer: Answerer | None,
        options: "ChatArguments | None" = None,
        model: str = "",
        trained_for: list[str] | None = None,
    ):
        self.answerer = answerer
        self.options = options if options is not None else ChatArguments()  # how the training data was prompted
        self.model = model  # --model_name_or_path (with @revision where not main)
        self.trained_for = trained_for  # the tasks the model was trained for (trained_tasks); None: no record
        self._lock = threading.Lock()  # one question at a time: the generator's streamer is shared

    @property
    def trained(self) -> list[str]:
        """The registered tasks the model was trained for, as recorded ([] without a record)."""
        return [name for name in task_names() if name in (self.trained_for or ())]

    @property
    def tasks(self) -> list[str]:
        """The tasks to offer: those the model was trained for, every task where there is no record of them."""
        return self.trained or task_names()

    def describe(self) -> str:
        """What answers, in one line: the model, the adapter, and the tasks it was trained for."""
        adapter = self.options.adapter_path
        text = f"`{self.model}`" + (f" with the adapter `{adapter}`" if adapter else "")
        if self.trained:
            return text + ", trained for " + ", ".join(get_task(name).title for name in self.trained) + "."
        if adapter:
            return text + " (no record of the task it was trained for)."
        return text + " (no adapter)."

    def task_to_ask(self, requested: str | None) -> str:
        """The task the terminal asks: ``requested`` (--task; a warning if the model was not trained for it), else
        the first the model was trained for."""
        if requested is None:
            return self.tasks[0]
        if self.trained and requested not in self.trained:
            logger.warning(
                "--task %s: the model was trained for %s only; it answers %s's prompts untrained",
                requested, ", ".join(self.trained), requested,
            )  # fmt: skip
        return requested

    def form(self, task: str):
        """How the chat asks the questions of ``task`` (its :class:`llama_squad.tasks.base.ChatForm`)."""
        return get_task(task).chat_form(self.options)

    def missing(self, task: str, material: str, question: str | None = None) -> str | None:
        """What the user left out, in one line (no text; with ``question``: no question either); None if nothing."""
        form = self.form(task)
        if not material.strip():
            return f"No {form.material_name.lower()}: paste one first."
        if question is not None and not question.strip():
            verb = "choose" if form.choices else "type"
            return f"No {form.question_name.lower()}: {verb} one about the {form.material_name.lower()}."
        return None

    def messages(self, task: str, material: str, question: str) -> tuple[list[dict], list[dict]]:
        """(prompt, completion) of a question about ``material``, built by the task as its dataset builds them (the
        completion's assistant turns are what the model writes; its user turns are follow-up instructions). An empty
        text or question, or one the task cannot ask (an unknown slot), raises
        :class:`llama_squad.files.InputError` saying so in one line."""
        from llama_squad.files import InputError

        problem = self.missing(task, material, question)
        if problem:
            raise InputError(problem)
        return get_task(task).chat_messages(material, question, self.options)

    def stream(self, task: str, messages: tuple[list[dict], list[dict]]) -> Iterator[str | Answer]:
        """The model's text so far as it is generated (every turn of a multi-turn prompt, one line each), then the
        :class:`Answer`."""
        from transformers import TextIteratorStreamer

        prompt, completion = messages
        conversation = start_conversation({"prompt": prompt, "completion": completion})
        turns = conversation.turns_left
        streamer = TextIteratorStreamer(self.answerer.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.answerer.answer([conversation])
            except BaseException as e:  # handed to the caller's thread below
                failure.append(e)
                for _ in range(turns):  # unblock the reader
                    streamer.text_queue.put(streamer.stop_signal)

        with self._lock:
            self.answerer.generator.streamer = streamer
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            try:
                done: list[str] = []
                for turn in range(turns):
                    text = ANSWER_PREFIX if self.answerer.options.force_answer and turn == turns - 1 else ""
                    for piece in streamer:
                        text += piece
                        yield "\n".join(done + [text])
                    done.append(text)
                thread.join()
            finally:
                self.answerer.generator.streamer = None
        if failure:
            raise failure[0]
        raw = conversation.outputs[-1]
        parsed = parse_json_answer(raw)
        yield Answer(self.form(task).no_answer, raw, parsed.answer, parsed.valid_json, parsed.abstained)

    def answer(self, task: str, messages: tuple[list[dict], list[dict]], on_text: Callable[[str], None] | None = None):
        """The :class:`Answer` to ``messages``; ``on_text`` gets the text so far as it grows."""
        for item in self.stream(task, messages):
            if isinstance(item, Answer):
                return item
            if on_text is not None:
                on_text(item)
        raise RuntimeError("the model gave no answer")  # stream always ends with one


def trained_tasks(path: str | os.PathLike | None) -> list[str] | None:
    """The tasks the model in a folder (an adapter, a checkpoint-N or merged folder in train.py's output_dir) was
    trained for, as train.py recorded them: the task of the dataset its run_config.yaml names (script.dataset_path),
    else the tasks its model card (README.md) lists in its tags. None without a record (a base model, a Hub id)."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    from llama_squad.export import dataset_task
    from llama_squad.outputs import MERGED_DIR

    if path is None or not Path(path).expanduser().is_dir():
        return None
    folder = Path(path).expanduser()
    places = [folder] + ([folder.parent] if folder.name.startswith("checkpoint-") or folder.name == MERGED_DIR else [])
    for place in places:
        try:
            resolved = yaml.safe_load((place / "run_config.yaml").read_text(encoding="utf-8"))
            dataset_path = resolved["script"]["dataset_path"]
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            continue
        task = dataset_task(dataset_path) if isinstance(dataset_path, str) else None  # None: the dataset is gone
        if task in task_names():
            return [task]
    for place in places:
        try:
            tags = (metadata_load(place / "README.md") or {}).get("tags") or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, AttributeError):
            continue
        found = [name for name in task_names() if name in ([tags] if isinstance(tags, str) else tags)]
        if found:
            return found
    return None


def load_chat(args: ChatArguments, model_args: ModelLoadingArguments, options: GenerationOptions) -> Chat:
    """The model (as test.py loads it) and a :class:`Chat` around it."""

    from llama_squad import adapters
    from llama_squad.files import InputError

    problems = options.problems()
    if options.num_beams > 1:
        problems.append(f"--num_beams {options.num_beams}: the chat streams one answer; use 1 (greedy or sampling)")
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
    adapters.check_for_inference(model_args, args.adapter_path, allow_mismatch=args.allow_base_mismatch)
    answerer = load_answerer(
        model_args, options, adapter_path=args.adapter_path, merge_adapter=args.merge_adapter, seed=args.seed
    )
    revision = model_args.model_revision
    model = model_args.model_name_or_path + (f"@{revision}" if revision and revision != "main" else "")
    return Chat(
        answerer, args, model=model, trained_for=trained_tasks(args.adapter_path or model_args.model_name_or_path)
    )


# ---------------------------------------------------------------------------------------------------- terminal


def wants_to_leave(line: str) -> bool:
    """Whether a line typed in the terminal asks to leave (exit, quit)."""
    return line.strip().lower() in LEAVE_WORDS


def read_text(read: Callable[[str], str], prompt: str) -> str | None:
    """The lines typed until one holding only :data:`END_OF_TEXT`, blank lines kept (a text of several paragraphs is
    read whole) but those around it left out; None when the first line is exit or quit. End of input (Ctrl-D) raises
    ``EOFError``."""
    lines: list[str] = []
    while True:
        line = read(prompt)
        prompt = ""
        if line.strip() == END_OF_TEXT:
            while lines and not lines[-1].strip():
                lines.pop()
            return "\n".join(lines)
        if not lines and wants_to_leave(line):
            return None
        if lines or line.strip():
            lines.append(line)


def run_terminal(chat: Chat, task: str, read: Callable[[str], str] = input, out=sys.stdout) -> None:
    """Ask for a context (or a dialogue), then questions (or slots) about it, until exit, quit or end of input; print
    each answer as it is generated, then the answer read from it. What the user left out, or a question the task
    cannot ask, gets one line and the question again."""
    try:
        _converse(chat, task, read, out)
    except EOFError:
        out.write("\n")  # after Ctrl-D the shell's prompt starts a line of its own


def _converse(chat: Chat, task: str, read: Callable[[str], str], out) -> None:
    from llama_squad.files import InputError

    form = chat.form(task)
    name = form.material_name.lower()
    ask_text = (
        f'{form.material}: paste it, blank lines and all, then a line holding only "{END_OF_TEXT}" (exit quits):\n'
    )
    ask_question = f"{form.question} (empty: a new {name}; exit quits): "
    while True:
        material = read_text(read, ask_text)
        if material is None:
            return
        if chat.missing(task, material):
            out.write(chat.missing(task, material) + "\n")
            continue
        while True:
            question = read(ask_question).strip()
            if wants_to_leave(question):
                return
            if not question:
                break
            try:
                messages = chat.messages(task, material, question)
            except InputError as e:  # a slot the task does not know
                out.write(f"{e}\n")
                continue
            shown = 0

            def echo(text: str) -> None:
                nonlocal shown
                out.write(text[shown:])
                out.flush()
                shown = len(text)

            answer = chat.answer(task, messages, on_text=echo)
            out.write(f"\nanswer: {answer.shown}" + ("" if answer.valid_json else "  (not valid JSON)") + "\n\n")


# ---------------------------------------------------------------------------------------------------- page

PAGE_INTRO = (
    '## llama-squad\nThe model answers from the text alone, in JSON: `{"answer": "..."}`, or `"?"` when the text '
    "holds no answer. Enter in the question box (Shift+Enter in the text box) asks."
)


def build_app(chat: Chat):
    """The Gradio page: the model and adapter it runs, then a tab per task the model was trained for (its text, its
    question → the model's JSON output and the answer read from it; Enter asks; examples to fill in), each an API
    endpoint named by the task (``/answer`` for SQuAD v2, ``/slot_value`` for MultiWOZ) that returns (model output,
    answer). What the user left out, or a question the task cannot ask, is an error message on the page (and to an
    API client), never a traceback in the server's log."""
    try:
        import gradio as gr
    except ImportError:
        from llama_squad.files import InputError

        raise InputError('--app needs Gradio: pip install -e ".[chat]" (or pip install gradio)') from None
    from llama_squad.files import InputError

    def answerer(task: str):
        def answer(material: str | None, question: str | None) -> Iterator[tuple[str, str]]:
            try:
                messages = chat.messages(task, material or "", question or "")
            except InputError as e:  # the user's to fix: a message on the page, no traceback in the log
                raise gr.Error(str(e), print_exception=False) from None
            for item in chat.stream(task, messages):
                yield (item.raw, item.shown) if isinstance(item, Answer) else (item, "")

        return answer

    left_out = [get_task(name).title for name in task_names() if name not in chat.tasks]
    with gr.Blocks(title="llama-squad") as app:
        gr.Markdown(PAGE_INTRO)
        gr.Markdown(
            f"**Model:** {chat.describe()}"
            + (f" Not offered: {', '.join(left_out)} (not trained for)." if left_out else ""),
            elem_id="model",
        )
        for task in chat.tasks:
            form = chat.form(task)
            with gr.Tab(form.tab):
                material = gr.Textbox(label=form.material_name, lines=8, placeholder=form.placeholder)
                if form.choices:  # a value typed in is checked by the task (an unknown one: a message, no traceback)
                    question = gr.Dropdown(
                        choices=list(form.choices), value=form.choices[0], label=form.question, allow_custom_value=True
                    )
                    asks = [material.submit]
                else:
                    question = gr.Textbox(label=form.question)
                    asks = [question.submit, material.submit]  # Enter; Shift+Enter in the text box
                ask = gr.Button(form.button, variant="primary")
                raw = gr.Textbox(label="Model output (JSON)")
                parsed = gr.Textbox(label=form.answer_label)
                gr.on([ask.click, *asks], answerer(task), [material, question], [raw, parsed], api_name=form.api_name)
                if form.examples:
                    gr.Examples(
                        [list(example) for example in form.examples],
                        [material, question],
                        example_labels=[q for _, q in form.examples],
                    )
    return app


# ---------------------------------------------------------------------------------------------------- main


ARGUMENTS = [ChatArguments, ModelLoadingArguments, GenerationOptions]  # the options, in --help's order


def main(argv: list[str] | None = None) -> int:
    """Load the model, then ask in the terminal or serve the page. 0 on success, 1 on bad input."""
    from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging

    args, model_args, options = parse_dataclasses(ARGUMENTS, argv, description=__doc__)
    setup_logging()
    try:
        chat = load_chat(args, model_args, options)
        logger.info("model: %s", chat.describe())
        if args.app:
            app = build_app(chat)
            logger.info("serving on http://%s:%d (Ctrl-C stops)", args.server_name, args.server_port)
            app.launch(server_name=args.server_name, server_port=args.server_port)
        else:
            run_terminal(chat, chat.task_to_ask(args.task))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # bad input, a file that cannot be read: one line naming it; a bug: its traceback
        return exit_code_of(e, logger.error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
