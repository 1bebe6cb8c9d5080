"""LoRA adapters: checked whole before loading, fingerprinted for results records, and matched to the base model they
were trained on."""

import json
import logging
import os
from pathlib import Path

from llama_squad.embedded import ModelError, is_embedded
from llama_squad.files import InputError, fingerprint_files, read_json
from llama_squad.models import model_fingerprint

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter(adapter_path: str | os.PathLike) -> dict:
    """The adapter_config.json of a LoRA adapter folder, once its config parses and its weights are whole."""
    from llama_squad.checkpoints import file_problem

    folder = Path(adapter_path)
    option = f"--adapter_path {adapter_path}"
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{option}: no adapter_config.json (expected train.py's output_dir, or a checkpoint in it)")
    try:
        config = read_json(folder / "adapter_config.json")
    except InputError as e:
        raise ModelError(f"{option}: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise ModelError(
            f"{option}: {folder / 'adapter_config.json'} is not a PEFT adapter config (no 'peft_type'); "
            "re-run train.py, or restore the file from the checkpoint it came from"
        )
    weights = [folder / name for name in ADAPTER_WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise ModelError(f"{option}: no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    problem = file_problem(weights[0])
    if problem:
        raise ModelError(f"{option}: {problem}; re-run train.py, or use one of its checkpoint-N folders")
    return config


def _looks_local(model_name_or_path: str) -> bool:
    """Whether a model name is meant as a path (not a Hub id ``[NAMESPACE/]NAME``)."""
    return model_name_or_path.startswith((".", "/", "~")) or model_name_or_path.count("/") > 1


def model_identity(model_name_or_path: str, revision: str | None = "main") -> str | None:
    """What a base model's weights are, to tell whether two names name the same model: ``embedded:...`` for the
    embedded model and for a folder converted from it (it holds the conversion's record), a content hash for another
    folder (see :func:`model_fingerprint`: a copy elsewhere is the same model), ``hub:ID@REVISION`` for a Hub id; None
    for a path that is not on this machine."""
    from llama_squad.embedded import CONVERTED_MARKER

    if is_embedded(model_name_or_path):
        return model_fingerprint(model_name_or_path)
    path = Path(model_name_or_path).expanduser()
    if path.is_dir():
        try:
            source = json.loads((path / CONVERTED_MARKER).read_text(encoding="utf-8"))["source"]
        except (OSError, ValueError, KeyError, TypeError):
            return "files:" + model_fingerprint(str(path))
        return "embedded:" + json.dumps(source, sort_keys=True)
    if path.exists() or _looks_local(model_name_or_path):
        return None
    return f"hub:{model_name_or_path}@{revision or 'main'}"


def adapter_bases(adapter_path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The base model an adapter was trained on, as recorded: (file, model name, revision) from train.py's
    ``run_config.yaml`` beside it (beside its ``checkpoint-N`` folder for a checkpoint), then from PEFT's
    ``adapter_config.json`` (``base_model_name_or_path``). Unreadable records are left out."""
    import yaml

    folder = Path(adapter_path)
    found = []
    for run_config in (folder / "run_config.yaml", folder.parent / "run_config.yaml"):
        if run_config.parent == folder.parent and not folder.name.startswith("checkpoint-"):
            continue
        try:
            model = yaml.safe_load(run_config.read_text(encoding="utf-8"))["model"]
            found.append((str(run_config), str(model["model_name_or_path"]), model.get("model_revision") or "main"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            pass
        break
    try:
        config = read_json(folder / "adapter_config.json")
        if isinstance(config, dict) and isinstance(config.get("base_model_name_or_path"), str):
            base = config["base_model_name_or_path"]
            found.append((str(folder / "adapter_config.json"), base, config.get("revision") or "main"))
    except InputError:
        pass
    return found


def _comparable(a: str, b: str | None) -> bool:
    """Whether two model identities can tell the models apart: a local folder's hash says nothing about a Hub id (the
    folder may be a download of it), while the embedded model is neither another folder nor any Hub model."""
    if b is None:
        return False
    kinds = {a.split(":", 1)[0], b.split(":", 1)[0]}
    return len(kinds) == 1 or "embedded" in kinds


def check_adapter_base(
    adapter_path: str | os.PathLike, model_name_or_path: str, revision: str = "main", allow_mismatch: bool = False
) -> None:
    """Refuse to apply an adapter to another base model than the one it was trained on (an adapter applied to a
    model of the same shape runs, and answers as neither was trained).

    The first record of :func:`adapter_bases` whose model is on this machine (or is a Hub id) is compared: by name,
    then by :func:`model_identity` (a copy of the same folder elsewhere is the same model). With ``allow_mismatch``
    (the user says so) a mismatch is a warning; where no record can be compared, a warning says so.
    """
    bases = adapter_bases(adapter_path)
    if not bases:
        return
    given = None
    for where, name, rev in bases:
        if name == model_name_or_path and rev == (revision or "main"):
            return
        trained = model_identity(name, rev)
        if trained is None:  # a path of the machine it was trained on: the next record may tell more
            continue
        given = given or model_identity(model_name_or_path, revision)
        if trained == given:
            return
        if not _comparable(trained, given):
            break
        message = (
            f"--adapter_path {adapter_path} was trained on {name} ({where}), but --model_name_or_path "
            f"{model_name_or_path} is another model (other weights): an adapter on another base answers as neither "
            f"was trained. Pass --model_name_or_path {name}"
        )
        if allow_mismatch:
            logger.warning("%s; applying it anyway (--allow_base_mismatch)", message)
            return
        raise ModelError(f"{message}, or --allow_base_mismatch to apply it anyway")
    logger.warning(
        "cannot check that the adapter %s was trained on --model_name_or_path %s: the base model it records is not "
        "on this machine, or is a Hub id where a folder is given",
        adapter_path, model_name_or_path,
    )  # fmt: skip


def adapter_fingerprint(adapter_path: str | os.PathLike) -> str:
    """A content hash of an adapter's config and weights (a retrained adapter gets another one)."""
    folder = Path(adapter_path)
    return fingerprint_files([p for p in folder.iterdir() if p.name in ("adapter_config.json", *ADAPTER_WEIGHTS)])


def check_for_inference(model_args, adapter_path: str | os.PathLike | None = None, allow_mismatch: bool = False):
    """Before anything heavy is loaded for answering: the model source (``model_args``: ModelLoadingArguments), the
    adapter whole and trained on that model, and the pause tokens file of either."""
    from llama_squad import pause
    from llama_squad.models import check_model_source

    check_model_source(model_args.model_name_or_path, revision=model_args.model_revision)
    if adapter_path is not None:
        check_adapter(adapter_path)
        check_adapter_base(adapter_path, model_args.model_name_or_path, model_args.model_revision, allow_mismatch)
    pause.check_file(adapter_path or model_args.model_name_or_path)
