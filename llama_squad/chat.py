"""Ask a tuned model questions in the terminal or on a Gradio page: the training data's prompts, test.py's answers.

    python -m llama_squad.chat --adapter_path output/smollm2                      # SQuAD: a context, then questions
    python -m llama_squad.chat --adapter_path output/smollm2-multiwoz21 --task multiwoz   # a dialogue, then slots
    python -m llama_squad.chat --adapter_path output/smollm2 --app                # a page on http://127.0.0.1:7860

The prompt is built by the task's own ``build_messages`` (as create_dataset.py builds it: give the same
``--system_prompt`` and ``--prompt`` as the dataset the model was trained on), and answered by test.py's model loading
and ``Generator``: the same question gets test.py's answer (greedy). Tokens are printed as they come. ``--app`` needs
Gradio: ``pip install -e ".[chat]"``.
"""

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from llama_squad.answers import parse_json_answer
from llama_squad.config import ModelLoadingArguments
from llama_squad.evaluation.answering import ANSWER_PREFIX, Answerer, load_answerer, start_conversation
from llama_squad.generation import GenerationOptions
from llama_squad.tasks import get_task, task_names
from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT

logger = logging.getLogger(__name__)

UNREADABLE_TEXT = "(no answer could be read from the model's output)"


@dataclass
class ChatArguments:
    """Which adapter answers (the model: --model_name_or_path and the other loading options, as in train.py), how its
    prompts are built, and where the page is served."""

    adapter_path: str | None = field(
        default=None, metadata={"help": "A LoRA adapter folder (train.py's output_dir) to apply to the model."}
    )
    task: str = field(
        default=task_names()[0],
        metadata={"help": "In the terminal: squad_v2 (a context, then questions) or multiwoz (a dialogue, then "
                  "slots). The page has every task.", "choices": task_names()},
    )  # fmt: skip
    prompt: str = field(
        default="single_turn",
        metadata={"help": "SQuAD prompt style of the training data: single_turn or multi_turn."},
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

    def __init__(self, answerer: Answerer | None, options: "ChatArguments | None" = None):
        self.answerer = answerer
        self.options = options if options is not None else ChatArguments()  # how the training data was prompted
        self._lock = threading.Lock()  # one question at a time: the generator's streamer is shared

    def form(self, task: str):
        """How the chat asks the questions of ``task`` (its :class:`llama_squad.tasks.base.ChatForm`)."""
        return get_task(task).chat_form(self.options)

    def messages(self, task: str, material: str, question: str) -> tuple[list[dict], list[dict]]:
        """(prompt, completion) of a question about ``material``, built by the task as its dataset builds them (the
        completion's assistant turns are what the model writes; its user turns are follow-up instructions)."""
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
    return Chat(answerer, args)


# ---------------------------------------------------------------------------------------------------- terminal


def _read_block(read: Callable[[str], str], label: str) -> str | None:
    """Lines typed until an empty one, joined; None at end of input."""
    lines = []
    prompt = f"{label} (end with an empty line; Ctrl-D quits):\n"
    while True:
        try:
            line = read(prompt)
        except EOFError:
            return "\n".join(lines) if lines else None
        prompt = ""
        if not line.strip():
            if lines:
                return "\n".join(lines)
            continue
        lines.append(line)


def run_terminal(chat: Chat, task: str, read: Callable[[str], str] = input, out=sys.stdout) -> None:
    """Ask for a context (or a dialogue), then questions (or slots) about it, until end of input; print each answer
    as it is generated, then the answer read from it."""
    from llama_squad.files import InputError

    form = chat.form(task)
    while True:
        material = _read_block(read, form.material)
        if material is None:
            return
        while True:
            try:
                question = read(f"{form.question} (empty: a new {form.material.split()[0].lower()}): ").strip()
            except EOFError:
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


def build_app(chat: Chat):
    """The Gradio page: a tab per task (its text, its question → the model's JSON output and the answer read from it),
    each an API endpoint named by the task (``/answer`` for SQuAD v2, ``/slot_value`` for MultiWOZ) that returns
    (model output, answer)."""
    try:
        import gradio as gr
    except ImportError:
        from llama_squad.files import InputError

        raise InputError('--app needs Gradio: pip install -e ".[chat]" (or pip install gradio)') from None

    def answerer(task: str):
        def answer(material: str, question: str) -> Iterator[tuple[str, str]]:
            if not material.strip() or not question.strip():
                raise gr.Error(f"Give a {form.material.split()[0].lower()} and a {form.question.split()[0].lower()}.")
            for item in chat.stream(task, chat.messages(task, material, question)):
                yield (item.raw, item.shown) if isinstance(item, Answer) else (item, "")

        form = chat.form(task)
        return answer

    with gr.Blocks(title="llama-squad") as app:
        gr.Markdown(
            '## llama-squad\nThe model answers from the text alone, in JSON: `{"answer": "..."}`, or `"?"` when the '
            "text holds no answer."
        )
        for task in task_names():
            form = chat.form(task)
            with gr.Tab(form.tab):
                material = gr.Textbox(label=form.material.split(" (")[0], lines=8, placeholder=form.placeholder)
                if form.choices:
                    question = gr.Dropdown(choices=list(form.choices), value=form.choices[0], label=form.question)
                else:
                    question = gr.Textbox(label=form.question)
                ask = gr.Button(form.button, variant="primary")
                raw = gr.Textbox(label="Model output (JSON)")
                parsed = gr.Textbox(label=form.answer_label)
                ask.click(answerer(task), [material, question], [raw, parsed], api_name=form.api_name)
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
        if args.app:
            app = build_app(chat)
            logger.info("serving on http://%s:%d (Ctrl-C stops)", args.server_name, args.server_port)
            app.launch(server_name=args.server_name, server_port=args.server_port)
        else:
            run_terminal(chat, args.task)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # bad input, a file that cannot be read: one line naming it; a bug: its traceback
        return exit_code_of(e, logger.error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
