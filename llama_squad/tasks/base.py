"""What a task is: one object owning its data, its answers' form and scoring, and how tables, chat, cards show it."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatForm:
    """How the chat asks one of a task's questions: what the user gives (a text, then a question about it), the
    answer of a question the text does not answer, and the page's labels."""

    tab: str  # the page's tab, e.g. "Question answering (SQuAD v2)"
    material: str  # what the user pastes first, e.g. "Context"
    question: str  # what the user asks about it, e.g. "Question"
    no_answer: str  # what an abstention means, in words
    button: str = "Answer"
    answer_label: str = "Answer"
    api_name: str = "answer"  # the page's API endpoint (/answer)
    placeholder: str = ""  # a hint in the material box
    choices: tuple[str, ...] = ()  # the questions there are to ask, when fixed (MultiWOZ's slots); () for free text
    examples: tuple[tuple[str, str], ...] = ()  # (material, question) pairs the page offers

    @property
    def material_name(self) -> str:
        """What the user pastes, without its hint: "Dialogue" for "Dialogue (User: ... / System: ... lines)"."""
        return self.material.split(" (")[0]

    @property
    def question_name(self) -> str:
        """What the user asks, without its hint: "Slot" for "Slot (e.g. attraction-area)"."""
        return self.question.split(" (")[0]


@dataclass(frozen=True)
class CardInfo:
    """What a model card says of a task: the Hub's task type and name, the Hub dataset, the scores it lists."""

    task_type: str  # "question-answering", "text-generation"
    task_name: str  # "Extractive QA with abstention"
    hub_dataset: str | None  # e.g. rajpurkar/squad_v2; None: named in the text only
    metrics: dict[str, tuple[str, str]]  # metrics.json key -> (Hub metric type, display name)


class Task:
    """A task (SQuAD v2, MultiWOZ, ...): a package under ``llama_squad/tasks/`` holds one, registered by name in
    :data:`llama_squad.tasks.TASKS`; code outside ``tasks/`` asks it, never names it.

    Data: :attr:`Arguments` (the options of ``create_dataset.py --task NAME``, a ``help`` on every field) and
    :meth:`build_dataset` (``train`` / ``validation`` / ``test`` splits whose rows hold
    :data:`llama_squad.tasks.common.DATASET_COLUMNS` and the task's own). Answers: :meth:`score_output` (one scored
    results row per question), :meth:`summarize` (a run's flat metrics), :meth:`constraint_of` (what ``--constrain``
    lets the model write). Presentation: :attr:`title`, :attr:`headline_metrics` (the narrow table and the chart),
    :attr:`signature_metric` (a metric only this task reports), :attr:`card`, and the chat's :meth:`chat_form` and
    :meth:`chat_messages`.
    """

    name: str  # the value of --task, and of every row's "task" column
    title: str  # "SQuAD v2"
    Arguments: type  # a llama_squad.tasks.common.DatasetArguments subclass
    extra_result_columns: tuple[str, ...] = ()  # the task's columns of a results row beyond results.RESULT_COLUMNS
    headline_metrics: tuple[str, ...] = ()
    signature_metric: str = ""  # a metrics.json key of this task alone (tells the task of an older metrics.json)
    threshold_metric: str = "f1"  # the row score a no-answer threshold maximizes (llama_squad.evaluation.calibration)
    threshold_group: str | None = None  # a results column: one threshold per value of it (None: one threshold)
    card: CardInfo

    def build_dataset(self, args):
        """``datasets.DatasetDict`` of the train / validation / test splits built from ``args`` (:attr:`Arguments`)."""
        raise NotImplementedError

    def score_output(self, raw_output: str, example: dict) -> list[dict]:
        """The scored results row(s) of one generated answer to ``example`` (a dataset row): one per question."""
        raise NotImplementedError

    def summarize(self, results) -> dict[str, float]:
        """The flat metrics of a run's results (a ``pandas.DataFrame`` of rows of :meth:`score_output`)."""
        raise NotImplementedError

    def constraint_of(self, example: dict, mode: str):
        """What ``--constrain mode`` lets the model answer to ``example`` (a
        :class:`llama_squad.constrain.AnswerSpec`), None for anything."""
        return None

    def value_probe(self, example: dict) -> tuple[str, str] | None:
        """Where the value of the answer to ``example`` begins and which value abstains: (JSON key, value), read by
        the engine for the row's ``no_answer_prob``; None where the answer has no such single value."""
        from llama_squad.answers import NO_ANSWER

        return ("answer", NO_ANSWER)

    def evaluation_sample(self, examples: list, n: int, seed: int) -> list:
        """``n`` of ``examples`` drawn with ``seed``, in their order: the questions train.py's ``--eval_questions``
        asks at every evaluation."""
        import random

        chosen = sorted(random.Random(seed).sample(range(len(examples)), n))
        return [examples[i] for i in chosen]

    def chat_form(self, options) -> ChatForm:
        """How the chat asks this task's questions; ``options``: the chat's options (``ChatArguments``)."""
        raise NotImplementedError

    def chat_messages(self, material: str, question: str, options) -> tuple[list[dict], list[dict]]:
        """(prompt, completion) of a question the user typed about ``material``, built as the dataset builds them
        (the completion's assistant turns are what the model writes; its user turns are follow-up instructions).
        Raises :class:`llama_squad.files.InputError` for a question the task cannot ask."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"
