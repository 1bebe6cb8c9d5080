"""Which checkpoint to resume from: the newest one that was written completely, never a torn one.

The Trainer writes a checkpoint in place, in this order: the model (adapter) weights, the optimizer, scheduler and
scaler, the RNG states, then ``trainer_state.json``. A process killed on the way leaves ``checkpoint-N/`` without
some of these, or with one cut short; resuming from it fails, and since ``transformers.get_last_checkpoint`` takes
the highest number, every re-run would fail the same way. Here a checkpoint counts as complete when its
``trainer_state.json`` parses and names step N, its weights are whole (safetensors header and size, torch zip
directory) and, unless it was saved with ``save_only_model``, its optimizer and scheduler states are whole too.
"""

import json
import logging
import os
import re
import struct
import time
import zipfile
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(
    r"^checkpoint-(\d+)$"
)  # transformers' PREFIX_CHECKPOINT_DIR, as get_last_checkpoint reads it
INCOMPLETE_PREFIX = "incomplete-"  # torn checkpoints are moved aside under this prefix (the Trainer's glob skips it)
TRAINER_STATE = "trainer_state.json"
# Weights as the Trainer saves them: an adapter (PEFT), a whole model (one file or sharded with an index), or the
# folders of sharded engines (FSDP's pytorch_model_fsdp_0, DeepSpeed's global_stepN), which are checked for presence.
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
ENGINE_FOLDERS = ("pytorch_model_fsdp_*", "global_step*")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILES = ("scheduler.pt",)


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (its header's declared data runs past the end), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is cut short ({size} bytes)"
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            return f"{path.name} is cut short (its header alone needs {header_len} bytes)"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return f"{path.name} has a corrupt header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        return f"{path.name} is cut short ({size} of {8 + header_len + end} bytes)"
    return None


def adapter_problem(folder: str | os.PathLike) -> str | None:
    """Why a saved adapter folder holds no trained weights (a missing file, or a safetensors file with no tensor: PEFT
    found none of the adapter's names in the state dict it was given), or None."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        return None if (Path(folder) / "adapter_model.bin").exists() else f"{path} was not written"
    problem = _safetensors_problem(path)
    if problem:
        return problem
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    if not any(k != "__metadata__" for k in header):
        return f"{path} holds no tensor"
    return None


def file_problem(path: Path) -> str | None:
    """Why a weights/state file is not whole, or None: safetensors by their header, torch files by their zip index."""
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".bin", ".pth") and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return f"{path.name} is cut short or corrupt (no zip directory at its end)"
    return None


def _weights_problem(folder: Path) -> str | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return file_problem(folder / name)
    for name in WEIGHT_INDEXES:
        if (folder / name).is_file():
            try:
                shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                return f"{name} is corrupt"
            for shard in shards:
                if not (folder / shard).is_file():
                    return f"the shard {shard} listed in {name} is missing"
                problem = file_problem(folder / shard)
                if problem:
                    return problem
            return None
    if any(any(folder.glob(pattern)) for pattern in ENGINE_FOLDERS):
        return None
    return "no model weights (adapter_model.safetensors, model.safetensors, ...)"


def _state_problem(state: dict) -> str | None:
    """What in a parsed ``trainer_state.json`` the Trainer would fail on when resuming, or None: it builds a
    ``TrainerState`` from its keys and reads the step, the epoch and the log history."""
    from transformers import TrainerState

    step, history = state["global_step"], state.get("log_history", [])
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"global_step {step!r}"
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        return "log_history is not a list of entries"
    if not isinstance(state.get("epoch") or 0, int | float):
        return f"epoch {state['epoch']!r}"
    try:
        TrainerState(**state)
    except TypeError as e:  # a key no TrainerState has
        return str(e).split("__init__() ", 1)[-1]
    return None


def checkpoint_problem(folder: str | os.PathLike, save_only_model: bool = False) -> str | None:
    """Why ``folder`` cannot be resumed from (a short sentence), or None when it is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    state_path = folder / TRAINER_STATE
    if not state_path.is_file():
        return f"no {TRAINER_STATE} (the Trainer writes it last)"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        step = state["global_step"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{TRAINER_STATE} is cut short or corrupt"
    problem = _state_problem(state)
    if problem:
        return f"{TRAINER_STATE} is corrupt ({problem})"
    match = CHECKPOINT_RE.match(folder.name)
    if match and int(match.group(1)) != step:
        return f"{TRAINER_STATE} says step {step}, not {match.group(1)}"
    problem = _weights_problem(folder)
    if problem or save_only_model:
        return problem
    sharded_engine = any(any(folder.glob(pattern)) for pattern in ENGINE_FOLDERS)
    for what, names in (("optimizer", OPTIMIZER_FILES), ("scheduler", SCHEDULER_FILES)):
        present = [folder / name for name in names if (folder / name).is_file()]
        if not present:
            if sharded_engine:  # FSDP / DeepSpeed keep their optimizer state in their own folders
                continue
            return f"no {what} state ({' or '.join(names)}); pass --save_only_model if it was saved without one"
        problem = file_problem(present[0])
        if problem:
            return problem
    return None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, newest (highest N) first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete_checkpoint(
    output_dir: str | os.PathLike, save_only_model: bool = False, move_incomplete: bool = True
) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None.

    Newer, incomplete ones are logged with the reason they are skipped and, with ``move_incomplete`` (the main
    process only, in a distributed run), renamed ``incomplete-checkpoint-N`` so that the Trainer neither rotates a
    good checkpoint out in their favour nor writes into their leftovers. Nothing is deleted.
    """
    for folder in list_checkpoints(output_dir):
        problem = checkpoint_problem(folder, save_only_model)
        if problem is None:
            return folder
        logger.warning("skipping %s: incomplete (%s), probably cut short by a crash", folder, problem)
        if move_incomplete:
            aside = folder.with_name(INCOMPLETE_PREFIX + folder.name)
            if aside.exists():
                aside = aside.with_name(f"{aside.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(folder, aside)
            logger.warning("moved it to %s (delete it once you no longer need it)", aside)
    return None
