"""SQuAD v2 as a :class:`llama_squad.tasks.base.Task`: extractive QA over a context, "?" when it holds no answer."""

from llama_squad.tasks.base import CardInfo, ChatForm, Task
from llama_squad.tasks.squad_v2 import dataset, prompts, scoring
from llama_squad.tasks.squad_v2.options import NAME, PROMPT_STYLES, Arguments
from llama_squad.tasks.squad_v2.readers import Record

CHAT_EXAMPLES = (
    (
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
        "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
        "In what country is Normandy located?",
    ),
    (
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
        "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
        "Who was the duke in the battle of Hastings?",
    ),
)


class SquadV2(Task):
    """SQuAD v2: a context and a question; the answer is a span of the context, or "?"."""

    name = NAME
    title = "SQuAD v2"
    Arguments = Arguments
    extra_result_columns = scoring.EXTRA_RESULT_COLUMNS
    headline_metrics = ("valid_json", "exact", "f1", "HasAns_exact", "NoAns_exact")
    signature_metric = "exact"
    card = CardInfo(
        task_type="question-answering",
        task_name="Extractive QA with abstention",
        hub_dataset="rajpurkar/squad_v2",
        metrics={
            "exact": ("exact_match", "Exact match"),
            "f1": ("f1", "F1"),
            "HasAns_exact": ("exact_match", "Exact match, answerable questions"),
            "NoAns_exact": ("exact_match", "Exact match, unanswerable questions (abstention)"),
            "valid_json": ("accuracy", "Valid JSON"),
        },
    )

    build_dataset = staticmethod(dataset.build_dataset)
    score_output = staticmethod(scoring.score_output)
    summarize = staticmethod(scoring.summarize)
    constraint_of = staticmethod(prompts.constraint_of)

    def chat_form(self, options) -> ChatForm:
        return ChatForm(
            tab="Question answering (SQuAD v2)",
            material="Context",
            question="Question",
            no_answer="No answer: the context does not say.",
            examples=CHAT_EXAMPLES,
        )

    def chat_messages(self, material, question, options):
        from llama_squad.files import InputError

        style = getattr(options, "prompt", "single_turn")
        if style not in PROMPT_STYLES:
            raise InputError(f"--prompt {style!r}: choose one of {', '.join(PROMPT_STYLES)}")
        record = Record(id="chat", title="", context=material, question=question, answers=(), article=0)
        return prompts.build_messages(record, style, options.system_prompt)
