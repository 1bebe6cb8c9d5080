"""What every task's dataset shares: the common columns and options."""

from dataclasses import dataclass, field

# Columns every dataset row has. ``prompt`` is the system + first user message; ``completion`` is the assistant
# answer (multi-turn: assistant, user, assistant, ... where the user turns are follow-up instructions and every
# assistant turn is a training target); ``answers`` lists every gold answer ([] = no answer, the target is "?").
DATASET_COLUMNS = ("id", "task", "prompt", "completion", "question", "answers")

DEFAULT_SYSTEM_PROMPT = (
    "You are a precise assistant. Answer only from the text you are given, and say when it holds no answer."
)


@dataclass
class DatasetArguments:
    """Options shared by every task of ``create_dataset.py``."""

    output_dir: str = field(metadata={"help": "Folder to write the DatasetDict to (datasets.save_to_disk)."})
    task: str | None = field(default=None, metadata={"help": "Which task to build: squad_v2 or multiwoz."})
    system_prompt: str = field(
        default=DEFAULT_SYSTEM_PROMPT,
        metadata={"help": "System message of every prompt. An empty string leaves the system message out."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the validation-split draw."})
    overwrite: bool = field(default=False, metadata={"help": "Replace output_dir if it already exists."})
