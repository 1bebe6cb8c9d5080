"""Test support: one process of an FSDP or DeepSpeed run of train.py on the CPU (gloo), for the tests only.

Started as each of the processes of ``accelerate launch`` with a shipped GPU config:

    DS_ACCELERATOR=cpu accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 \
        --mixed_precision no tests/launch_on_cpu.py <train.py arguments>

It sets up what accelerate (1.16) does not do on a CPU, then calls ``train.main`` with the arguments as given plus
``--use_cpu false --accelerator_config '{"use_configured_state": true}'``:

- the process group over gloo on the CPU, created before the Trainer (``PartialState(cpu=True, backend="gloo")``,
  which the Trainer then uses as it is: ``use_configured_state``; without it DeepSpeed's batch size check fails,
  ``2 != 2 * 1 * 2``);
- FSDP: accelerate turns FSDP into plain DDP for CPU processes (``AcceleratorState`` switches to
  ``DistributedType.FSDP`` for GPU-type devices only); here it switches for ``MULTI_CPU`` too, as it does for GPUs;
- DeepSpeed: its process group over gloo (``PartialState(backend="gloo")``, with ``DS_ACCELERATOR=cpu``) without
  the shared-memory collectives of its CPU accelerator (compiled with g++ at first use, 1-2 minutes), and PEFT's
  gathering of the pause rows under ZeRO-3, written for CUDA only, done on the CPU.

``--use_cpu false`` keeps train.py's refusal of FSDP / DeepSpeed with ``--use_cpu`` (right for users, whose CPU
processes accelerate would run as DDP) out of the way: the device is the CPU all the same, the configured state's.
train.py itself runs unchanged; a GPU run needs none of this.

With ``LLAMA_SQUAD_TEST_KILL_AT_STEP=N`` in the environment every process kills itself (SIGKILL) once all of them
have written checkpoint-N, as a crash would.
"""

import importlib
import os
import signal
import sys
from pathlib import Path

KILL_AT_STEP = "LLAMA_SQUAD_TEST_KILL_AT_STEP"


def set_up_cpu_state() -> None:
    """The accelerate state of this process: gloo on the CPU, FSDP or DeepSpeed as the launcher's environment says."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        if os.environ.get("DS_ACCELERATOR") != "cpu":
            raise SystemExit("DeepSpeed on the CPU needs DS_ACCELERATOR=cpu in the environment")
        # the CPU accelerator's shared-memory collectives (a GPU run never uses them): plain gloo instead. The module
        # by its name: deepspeed.comm.torch, the attribute, is torch itself
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        PartialState(backend="gloo")  # DeepSpeed's process group (deepspeed.comm), over gloo
        collect_pause_rows_on_cpu()
        return
    PartialState(cpu=True, backend="gloo")
    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return
    init = AcceleratorState.__init__

    def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        initialized = AcceleratorState._shared_state != {}
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if not initialized and fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # what AcceleratorState does for MULTI_GPU and the other GPU-type devices
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init_with_fsdp_on_cpu


def collect_pause_rows_on_cpu() -> None:
    """PEFT (0.21) gathers the rows of trainable tokens under ZeRO-3 on ``torch.cuda.current_device()`` ("right now,
    only CUDA is implemented"): the same steps, on the CPU."""
    import torch
    from peft.tuners.trainable_tokens import layer

    def collect(self, weight, rows, embed_dim):
        with layer.gather_params_ctx([weight], modifier_rank=None):
            if layer.dist.get_rank() == 0:
                token_weights = weight[rows].clone()
            else:
                token_weights = torch.empty((len(rows), embed_dim), dtype=weight.dtype, device="cpu")
        layer.dist.broadcast(token_weights, src=0)
        return token_weights

    layer.TrainableTokensLayer._collect_token_weights = collect


def kill_at_step(step: int) -> None:
    """Every process SIGKILLs itself once checkpoint-``step`` is written by all (after the Trainer's save)."""
    from transformers import TrainerCallback

    from llama_squad import training

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                import torch.distributed as dist

                dist.barrier()  # every process has written its part of the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

    build_trainer = training.build_trainer

    def build_trainer_that_crashes(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(KillAfterSave())
        return trainer

    training.build_trainer = build_trainer_that_crashes


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train

    set_up_cpu_state()
    if os.environ.get(KILL_AT_STEP):
        kill_at_step(int(os.environ[KILL_AT_STEP]))
    return train.main([*argv, "--use_cpu", "false", "--accelerator_config", '{"use_configured_state": true}'])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
