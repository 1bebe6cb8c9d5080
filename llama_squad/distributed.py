"""Runs of several processes (accelerate launch, torchrun): the sharding engine, quiet replicas, decisions the main
process makes for all, the effective batch size.

Nothing here launches processes or opens connections: accelerate and the Trainer do. Which process is which comes
from the ``TrainingArguments`` (``world_size``, ``process_index``, ``should_log``), set up from what the launcher set.
"""

import contextlib
import logging
import pickle
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def fsdp_enabled(config) -> bool:
    """Whether the Trainer will shard the model with FSDP: ``--fsdp`` on train.py, or an accelerate FSDP config
    (``accelerate launch --config_file configs/accelerate/fsdp.yaml``, which sets ``ACCELERATE_USE_FSDP``)."""
    from accelerate.utils import parse_flag_from_env

    return bool(getattr(config, "fsdp", None)) or parse_flag_from_env("ACCELERATE_USE_FSDP")


def fsdp_settings(config) -> tuple[int, str]:
    """``(FSDP version, state dict type)`` as the Trainer will shard: from train.py's ``--fsdp`` / ``--fsdp_config``
    (transformers' defaults: version 2, ``FULL_STATE_DICT``), else from what ``accelerate launch`` set
    (``FSDP_VERSION``, ``FSDP_STATE_DICT_TYPE``; accelerate's defaults: version 1, ``FULL_STATE_DICT`` for it and
    ``SHARDED_STATE_DICT`` for version 2). Read, not built: accelerate's plugin checks the devices when built."""
    import os

    from torch.distributed.fsdp import StateDictType

    args = getattr(config, "fsdp_plugin_args", None)
    if args:
        version, state_dict_type = int(args.get("fsdp_version", 2)), args.get("state_dict_type") or "FULL_STATE_DICT"
    else:
        version = int(os.environ.get("FSDP_VERSION", "1"))
        default = "FULL_STATE_DICT" if version == 1 else "SHARDED_STATE_DICT"
        state_dict_type = os.environ.get("FSDP_STATE_DICT_TYPE", default)
    if isinstance(state_dict_type, str) and state_dict_type.isdigit():
        state_dict_type = StateDictType(int(state_dict_type))
    return version, getattr(state_dict_type, "name", str(state_dict_type)).upper()


def deepspeed_zero3_enabled() -> bool:
    """Whether DeepSpeed ZeRO-3 shards the parameters (known once the ``TrainingArguments`` exist)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@contextlib.contextmanager
def gathered(params: Iterable, modifier_rank: int | None = None):
    """Whole ``params`` on every process within the block where DeepSpeed ZeRO-3 partitions them (each process holds a
    slice, and reading one gives an empty tensor); with ``modifier_rank``, what that process writes into them is kept
    and partitioned again on leaving. Elsewhere (and for parameters ZeRO-3 does not manage), nothing to do."""
    if not deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
        yield


def sharding_engine(config) -> str | None:
    """``"FSDP"`` or ``"DeepSpeed"`` when one was asked for (train.py's ``--fsdp`` / ``--deepspeed``, or an accelerate
    config, which sets ``ACCELERATE_USE_FSDP`` / ``ACCELERATE_USE_DEEPSPEED``); None for DDP or one process."""
    from accelerate.utils import parse_flag_from_env

    if fsdp_enabled(config):
        return "FSDP"
    if getattr(config, "deepspeed", None) or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    return None


def shards_parameters(config) -> bool:
    """Whether the parameters are sharded across processes (FSDP or ZeRO-3) rather than copied to each (DDP)."""
    return fsdp_enabled(config) or deepspeed_zero3_enabled()


def setup_process_logging(config) -> bool:
    """Logging for one process of several: lines tagged ``[rank N]``; on processes that should not log (all but the
    first of each machine, or of the run with ``--log_on_each_node false``) our logs, transformers' and datasets'
    lowered to ``--log_level_replica`` (warning by default), their progress bars and the deprecation warnings the
    main process shows already hidden. Returns whether this process logs in full. Does nothing in a single process.
    """
    return quiet_replicas(config.world_size, config.process_index, config.should_log, config.get_process_log_level())


def quiet_replicas(world_size: int, process_index: int, logs_in_full: bool, level: int = logging.WARNING) -> bool:
    """``setup_process_logging`` for any script: tag the lines with the rank; below ``level`` on the processes that do
    not log in full. Returns ``logs_in_full``."""
    if world_size == 1:
        return True
    from llama_squad.cli import tag_logs_with_rank

    tag_logs_with_rank(process_index)
    if logs_in_full:
        return True
    import warnings

    import datasets
    import transformers

    logging.getLogger().setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity(level)
    datasets.utils.logging.disable_progress_bar()
    if level > logging.INFO:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    return False


def run_on_main(config, fn: Callable[[], T]) -> T:
    """``fn()`` on the main process only, its result handed to every process (it must pickle). ``config`` is the
    ``TrainingArguments`` (``world_size``) or accelerate's ``PartialState`` (``num_processes``).

    An exception ``fn`` raises is raised on every process (the main one re-raises its own; the others a copy, or a
    ``RuntimeError`` with its message when it does not pickle), so that all of them stop with the same message rather
    than wait for a main process that has gone. Uses accelerate's ``broadcast_object_list``.
    """
    from accelerate.utils import broadcast_object_list

    world_size = config.world_size if hasattr(config, "world_size") else config.num_processes
    if world_size == 1:
        return fn()
    outcome = [None, None]  # (result, exception)
    error = None
    if config.process_index == 0:
        try:
            outcome[0] = fn()
        except Exception as e:  # every failure: the other processes must learn it, whatever it is
            error = e
            try:
                pickle.dumps(e)
                outcome[1] = e
            except Exception:  # an exception holding a lock, a file, ...: its message is enough for the others
                outcome[1] = RuntimeError(f"the main process failed: {type(e).__name__}: {e}")
    broadcast_object_list(outcome, from_process=0)
    if error is not None:
        raise error
    if outcome[1] is not None:
        raise outcome[1]
    return outcome[0]


def effective_batch_size(config) -> int:
    """Examples per optimizer step: per device × processes × gradient accumulation steps."""
    return config.per_device_train_batch_size * config.world_size * config.gradient_accumulation_steps


def describe_batch(config) -> str:
    """``effective batch size 16 (4 per device × 2 processes × 2 accumulation steps)``."""
    processes = "process" if config.world_size == 1 else "processes"
    steps = "step" if config.gradient_accumulation_steps == 1 else "steps"
    return (
        f"effective batch size {effective_batch_size(config)} ({config.per_device_train_batch_size} per device × "
        f"{config.world_size} {processes} × {config.gradient_accumulation_steps} accumulation {steps})"
    )
