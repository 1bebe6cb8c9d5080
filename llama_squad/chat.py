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

from llama_squad.answers import NO_ANSWER, parse_json_answer
from llama_squad.config import ModelLoadingArguments
from llama_squad.generation import ANSWER_PREFIX, GenerationOptions, Generator, load_generator, start_conversation
from llama_squad.tasks import multiwoz, squad_v2
from llama_squad.tasks.common import DEFAULT_SYSTEM_PROMPT

logger = logging.getLogger(__name__)

TASKS = (squad_v2.NAME, multiwoz.NAME)
NO_ANSWER_TEXT = {
    squad_v2.NAME: "No answer: the context does not say.",
    multiwoz.NAME: "Not set: the dialogue has not given this slot a value.",
}
UNREADABLE_TEXT = "(no answer could be read from the model's output)"


@dataclass
class ChatArguments:
    """Which adapter answers (the model: --model_name_or_path and the other loading options, as in train.py), how its
    prompts are built, and where the page is served."""

    adapter_path: str | None = field(
        default=None, metadata={"help": "A LoRA adapter folder (train.py's output_dir) to apply to the model."}
    )
    task: str = field(
        default=squad_v2.NAME,
        metadata={"help": "In the terminal: squad_v2 (a context, then questions) or multiwoz (a dialogue, then "
                  "slots). The page has both.", "choices": TASKS},
    )  # fmt: skip
    prompt: str = field(
        default="single_turn",
        metadata={"help": "SQuAD prompt style of the training data.", "choices": squad_v2.PROMPT_STYLES},
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

    task: str
    raw: str
    answer: str | None  # None: nothing could be read
    valid_json: bool
    abstained: bool  # answered "?"

    @property
    def shown(self) -> str:
        """The answer for a person: the value, "no answer" in words, or a note that the output was unreadable."""
        if self.abstained:
            return NO_ANSWER_TEXT[self.task]
        if self.answer is None:
            return UNREADABLE_TEXT
        return self.answer


def dialogue_history(text: str) -> str:
    """A typed dialogue as the dataset renders it (``history_lines``): one ``User: ...``/``System: ...`` line per
    utterance. Lines without a speaker alternate, starting with the user."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        speaker, colon, rest = line.partition(":")
        if colon and speaker.strip().upper() in multiwoz.SPEAKERS:
            lines.append((multiwoz.SPEAKERS[speaker.strip().upper()], rest.strip()))
        else:
            lines.append(("User" if len(lines) % 2 == 0 else "System", line))
    return "".join(f"{speaker}: {utterance}\n" for speaker, utterance in lines)


class Chat:
    """Builds the task's prompt for a question and answers it with a :class:`Generator`, streaming the tokens."""

    def __init__(
        self,
        generator: Generator,
        *,
        prompt_style: str = "single_turn",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        list_categorical_values: bool = False,
    ):
        self.generator = generator
        self.prompt_style = prompt_style
        self.system_prompt = system_prompt
        self.slots = {
            q.name: q for q in multiwoz.make_questions(multiwoz.default_slots(), "slot", list_categorical_values)
        }
        self._lock = threading.Lock()  # one question at a time: the generator's streamer is shared

    def squad_messages(self, context: str, question: str) -> tuple[list[dict], list[dict]]:
        """(prompt, completion) of a SQuAD question, by ``squad_v2.build_messages`` (the completion's assistant turns
        are what the model writes; its user turns are the follow-up instructions of a multi-turn prompt)."""
        record = squad_v2.Record(id="chat", title="", context=context, question=question, answers=(), article=0)
        return squad_v2.build_messages(record, self.prompt_style, self.system_prompt)

    def slot_messages(self, dialogue: str, slot: str) -> tuple[list[dict], list[dict]]:
        """(prompt, completion) of a MultiWOZ slot question about a typed dialogue, by ``multiwoz.build_messages``."""
        if slot not in self.slots:
            raise ValueError(f"unknown slot {slot!r}: choose one of {', '.join(self.slots)}")
        return multiwoz.build_messages(dialogue_history(dialogue), self.slots[slot], NO_ANSWER, self.system_prompt)

    def stream(self, task: str, messages: tuple[list[dict], list[dict]]) -> Iterator[str | Answer]:
        """The model's text so far as it is generated (every turn of a multi-turn prompt, one line each), then the
        :class:`Answer`."""
        from transformers import TextIteratorStreamer

        prompt, completion = messages
        conversation = start_conversation({"prompt": prompt, "completion": completion})
        turns = conversation.turns_left
        streamer = TextIteratorStreamer(self.generator.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generator.answer([conversation])
            except BaseException as e:  # handed to the caller's thread below
                failure.append(e)
                for _ in range(turns):  # unblock the reader
                    streamer.text_queue.put(streamer.stop_signal)

        with self._lock:
            self.generator.streamer = streamer
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            try:
                done: list[str] = []
                for turn in range(turns):
                    text = ANSWER_PREFIX if self.generator.options.force_answer and turn == turns - 1 else ""
                    for piece in streamer:
                        text += piece
                        yield "\n".join(done + [text])
                    done.append(text)
                thread.join()
            finally:
                self.generator.streamer = None
        if failure:
            raise failure[0]
        raw = conversation.outputs[-1]
        parsed = parse_json_answer(raw)
        yield Answer(task, raw, parsed.answer, parsed.valid_json, parsed.abstained)

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

    from llama_squad import models
    from llama_squad.files import InputError

    problems = options.problems()
    if options.num_beams > 1:
        problems.append(f"--num_beams {options.num_beams}: the chat streams one answer; use 1 (greedy or sampling)")
    if problems:
        raise InputError("invalid options:\n  - " + "\n  - ".join(problems))
    models.check_model_source(model_args.model_name_or_path, revision=model_args.model_revision)
    if args.adapter_path is not None:
        models.check_adapter(args.adapter_path)
        models.check_adapter_base(
            args.adapter_path, model_args.model_name_or_path, model_args.model_revision, args.allow_base_mismatch
        )
    generator = load_generator(
        model_args, options, adapter_path=args.adapter_path, merge_adapter=args.merge_adapter, seed=args.seed
    )
    return Chat(
        generator,
        prompt_style=args.prompt,
        system_prompt=args.system_prompt,
        list_categorical_values=args.list_categorical_values,
    )


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
    material_label = "Context" if task == squad_v2.NAME else "Dialogue (User: ... / System: ... lines)"
    question_label = "Question" if task == squad_v2.NAME else f"Slot (e.g. {next(iter(chat.slots))})"
    while True:
        material = _read_block(read, material_label)
        if material is None:
            return
        while True:
            try:
                question = read(f"{question_label} (empty: a new {material_label.split()[0].lower()}): ").strip()
            except EOFError:
                return
            if not question:
                break
            if task == multiwoz.NAME and question not in chat.slots:
                out.write(f"unknown slot {question!r}: one of {', '.join(chat.slots)}\n")
                continue
            messages = (
                chat.squad_messages(material, question)
                if task == squad_v2.NAME
                else chat.slot_messages(material, question)
            )
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
    """The Gradio page: a SQuAD tab (context, question → JSON output, answer) and a MultiWOZ tab (dialogue, slot →
    JSON output, value). API names: ``/answer`` and ``/slot_value``, each returning (model output, answer)."""
    try:
        import gradio as gr
    except ImportError:
        from llama_squad.files import InputError

        raise InputError('--app needs Gradio: pip install -e ".[chat]" (or pip install gradio)') from None

    def ui_stream(task: str, messages) -> Iterator[tuple[str, str]]:
        for item in chat.stream(task, messages):
            if isinstance(item, Answer):
                yield item.raw, item.shown
            else:
                yield item, ""

    def answer(context: str, question: str):
        if not context.strip() or not question.strip():
            raise gr.Error("Give a context and a question.")
        yield from ui_stream(squad_v2.NAME, chat.squad_messages(context, question))

    def slot_value(dialogue: str, slot: str):
        if not dialogue.strip() or slot not in chat.slots:
            raise gr.Error("Give a dialogue and choose a slot.")
        yield from ui_stream(multiwoz.NAME, chat.slot_messages(dialogue, slot))

    with gr.Blocks(title="llama-squad") as app:
        gr.Markdown(
            '## llama-squad\nThe model answers from the text alone, in JSON: `{"answer": "..."}`, or `"?"` when the '
            "text holds no answer."
        )
        with gr.Tab("Question answering (SQuAD v2)"):
            context = gr.Textbox(label="Context", lines=8)
            question = gr.Textbox(label="Question")
            ask = gr.Button("Answer", variant="primary")
            raw = gr.Textbox(label="Model output (JSON)")
            parsed = gr.Textbox(label="Answer")
            ask.click(answer, [context, question], [raw, parsed], api_name="answer")
        with gr.Tab("Dialogue state (MultiWOZ)"):
            dialogue = gr.Textbox(label="Dialogue", lines=8, placeholder="User: ...\nSystem: ...\nUser: ...")
            slot = gr.Dropdown(choices=list(chat.slots), value=next(iter(chat.slots)), label="Slot")
            ask_slot = gr.Button("Value", variant="primary")
            slot_raw = gr.Textbox(label="Model output (JSON)")
            value = gr.Textbox(label="Value")
            ask_slot.click(slot_value, [dialogue, slot], [slot_raw, value], api_name="slot_value")
    return app


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Load the model, then ask in the terminal or serve the page. 0 on success, 1 on bad input."""
    from llama_squad.cli import exit_code_of, parse_dataclasses, setup_logging

    args, model_args, options = parse_dataclasses([ChatArguments, ModelLoadingArguments, GenerationOptions], argv)
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
