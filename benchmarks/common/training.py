"""A training run timed: one epoch after untimed warm-up steps, with its non-pad tokens, padded positions, step
times, CPU time and peak memory."""

import time

from .machine import PeakMemory


class RecordingCollator:
    """Wraps the trainer's collator and records, per batch, the non-pad tokens, the padded positions and the rows."""

    def __init__(self, collator):
        self.collator = collator
        self.batches = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        # Padding-free / packed batches have no attention mask: one row, no padding (no pad_to_multiple_of here).
        tokens = int(mask.sum()) if mask is not None else ids.numel()
        self.batches.append((tokens, ids.numel(), len(examples)))
        return batch


def step_timer():
    """A TrainerCallback that timestamps the start of training and the end of every optimizer step (wall time after
    the GPU finishes, and this process's CPU time)."""
    import torch
    from transformers import TrainerCallback

    def now():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.start, self.steps, self.cpu_start, self.cpu_end = None, [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.steps, self.cpu_start = now(), [], time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(now())
            self.cpu_end = time.process_time()

    return StepTimer()


def timed_epoch(trainer, warmup_steps: int) -> dict:
    """Train ``trainer`` (its ``max_steps`` set to ``warmup_steps``) that many steps untimed, then one timed epoch over
    the same examples, from on_train_begin to the last on_step_end (batch loading, forward, backward, optimizer
    step); the epoch's figures. Tokens count non-pad (attention-mask) tokens only; peak memory is
    :class:`PeakMemory`'s during the epoch, and its Δ that peak minus the memory in use just before it."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log dict instead
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    timer = step_timer()
    trainer.add_callback(timer)
    memory = PeakMemory()
    if warmup_steps:
        trainer.train()  # untimed: allocator, kernels, lazy initialisation
    trainer.args.max_steps = -1  # then one whole epoch over the same examples
    recorder.batches = []
    memory.start()
    trainer.train()
    peak = memory.peak()

    steps = len(timer.steps)
    seconds = timer.steps[-1] - timer.start
    batches = recorder.batches[:steps]
    tokens = sum(b[0] for b in batches)
    positions = sum(b[1] for b in batches)
    rows = sum(b[2] for b in batches)  # packing: packed rows
    return {
        "steps": steps,
        "mean_padded_length": positions / rows,
        "non_pad_tokens": tokens,
        "padded_positions": positions,
        "padding_fraction": 1 - tokens / positions,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "cpu_seconds": timer.cpu_end - timer.cpu_start,  # all threads of this process: robust to a shared CPU
        "step_seconds": [b - a for a, b in zip([timer.start, *timer.steps[:-1]], timer.steps, strict=True)],
        "peak_memory_bytes": peak,
        "memory_delta_bytes": peak - memory.before,
    }
