"""What a figure was measured on: the device, the library versions, the machine's load, the process's peak memory."""

import os
import platform
import resource
from pathlib import Path


def device_name() -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def versions(*packages: str) -> dict[str, str]:
    """The version of each of ``packages`` (``python``: the interpreter's), by name."""
    from importlib.metadata import version

    return {name: platform.python_version() if name == "python" else version(name) for name in packages}


def versions_line(*packages: str) -> str:
    """``torch 2.x, transformers 4.y, ...``"""
    return ", ".join(f"{name} {v}" for name, v in versions(*packages).items())


# Dense bf16 tensor-core peaks (TFLOP/s) by device name, most specific first.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4), ("A100", 312.0)
)  # fmt: skip


def peak_flops(device: str, dtype: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named ``device`` computing in ``dtype`` (bfloat16 or float16), None when
    unknown (the CPU, float32, a GPU not in :data:`PEAK_BF16_TFLOPS`)."""
    if dtype not in ("bfloat16", "float16"):
        return None
    return next((tflops * 1e12 for name, tflops in PEAK_BF16_TFLOPS if name in device), None)


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average: other processes on the machine skew CPU timings."""
    return os.getloadavg()[0]


def load_line(before: float, after: float) -> str:
    return f"1-min load average: {before:.1f} at the start, {after:.1f} at the end ({os.cpu_count()} cores)"


def proc_status_kib(key: str) -> int | None:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``: KiB), None when absent."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


class PeakMemory:
    """The peak memory of a stretch of work: CUDA's allocator peak on a GPU; on a CPU the process's peak RSS (VmHWM:
    since :meth:`start` where it resets it, else the largest so far), and the memory in use when it started."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        self.before = 0

    def start(self, reset_rss: bool = True) -> None:
        """A new peak from now (on a CPU only with ``reset_rss``: Linux resets VmHWM when 5 is written to
        clear_refs)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return
        if reset_rss:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        self.before = self._rss_bytes("VmRSS")

    def peak(self) -> int:
        """The peak in bytes since :meth:`start`."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._rss_bytes("VmHWM")

    def peak_mib(self) -> float:
        return self.peak() / 2**20

    @staticmethod
    def _rss_bytes(key: str) -> int:
        kib = proc_status_kib(key)
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kib * 1024
