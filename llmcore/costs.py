"""What an answer costs: the model's FLOPs per generated token, and energy where the machine lets us read it.

    flops = step_flops(config, prefill_lengths=[120], decode_positions=[130, 141])   # one engine step's model work
    meter = EnergyMeter.for_device(torch.device("cpu"))
    meter.joules()          # a running total (RAPL on the CPU, NVML on a GPU), or None
    meter.unavailable       # None, or why energy cannot be read here ("no RAPL powercap in /sys/class/powercap")

FLOPs count the model's useful work (a multiply-add is 2): every linear layer on every token fed, attention
over the positions each token sees, and the output layer once per token chosen (prefill computes it for the
last prompt position only). Energy is the CPU package (RAPL, all packages) or the GPU (NVML) while the
engine steps: on a shared machine it includes what other processes burn at the same time.
"""
from __future__ import annotations

import glob
import logging
from pathlib import Path

import torch

from llmcore.model import ModelConfig

logger = logging.getLogger(__name__)
RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*"  # package domains; their subzones (cores, dram) are inside them


def token_flops(config: ModelConfig, position: int) -> float:
    """FLOPs to feed one token at `position` (0-based) through the layers, without the output layer."""
    c = config.n_embd
    if config.arch == "lstm":
        return config.n_layer * 2 * 4 * (2 * c) * c  # four gates over [input, hidden]
    return config.n_layer * (2 * 12 * c * c + 4 * c * (position + 1))  # qkv, proj, mlp (4x); q.k and attention.v


def step_flops(config: ModelConfig, prefill_lengths: list[int], decode_positions: list[int]) -> float:
    """One engine step: prompts prefilled (each token once, the output layer once) and tokens decoded. In closed
    form (the attention term is linear in the position), so that it costs the same at any batch size."""
    head = 2 * config.n_embd * config.vocab_size
    per_position = token_flops(config, 1) - token_flops(config, 0)  # attention's growth per position (0 for an LSTM)
    flops = len(decode_positions) * (token_flops(config, 0) + head) + per_position * sum(decode_positions)
    for length in prefill_lengths:  # positions 0..length-1
        flops += length * token_flops(config, 0) + head + per_position * (length - 1) * length // 2
    return float(flops)


class EnergyMeter:
    """A monotonic energy total in joules from RAPL (CPU) or NVML (GPU), or the reason there is none."""

    def __init__(self, read=None, unavailable: str | None = None) -> None:
        self._read = read
        self.unavailable = unavailable if read is None else None

    @classmethod
    def for_device(cls, device: torch.device) -> EnergyMeter:
        return cls._nvml(device) if device.type == "cuda" else cls._rapl()

    @classmethod
    def _rapl(cls, pattern: str = RAPL_GLOB) -> EnergyMeter:
        zones = [Path(z) for z in sorted(glob.glob(pattern))]
        if not zones:
            return cls(unavailable="no RAPL powercap in /sys/class/powercap (a VM or a non-Intel/AMD CPU)")
        try:
            counters = [_RaplCounter(z) for z in zones]
        except OSError as exc:
            return cls(unavailable=f"RAPL not readable: {exc.strerror or exc} (it is root-only on most kernels)")
        return cls(read=lambda: sum(c.joules() for c in counters))

    @classmethod
    def _nvml(cls, device: torch.device) -> EnergyMeter:
        try:
            import pynvml  # nvidia-ml-py; not a dependency: present on GPU images only
        except ImportError:
            return cls(unavailable="NVML not installed (pip install nvidia-ml-py)")
        try:
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as exc:  # NVMLError and its many subclasses: an old GPU or driver
            return cls(unavailable=f"NVML energy counter not readable: {exc}")
        return cls(read=lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)

    def joules(self) -> float | None:
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception as exc:  # a counter that vanished (a hot-unplugged GPU, a changed permission; NVMLError)
            self._read, self.unavailable = None, f"energy counter no longer readable: {exc}"
            logger.warning("%s", self.unavailable)
            return None


class _RaplCounter:
    """One RAPL zone's energy_uj, unwrapped: the counter rolls over at max_energy_range_uj."""

    def __init__(self, zone: Path) -> None:
        self.path = zone / "energy_uj"
        self.range_uj = int((zone / "max_energy_range_uj").read_text())
        self.last = int(self.path.read_text())
        self.total_uj = 0

    def joules(self) -> float:
        now = int(self.path.read_text())
        self.total_uj += now - self.last if now >= self.last else now + self.range_uj - self.last
        self.last = now
        return self.total_uj / 1e6
