"""What results measured or made on this machine depend on: the CPU model, the instruction sets
that change which kernels are built and how they lay data out, and the engine's version (wisdom
files and the transformed weights a native file may carry are keyed by it)."""
from __future__ import annotations

import functools
import platform

# Instruction-set flags that change which kernels are built and how fast they run.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


@functools.lru_cache(maxsize=None)
def _cpu() -> tuple[str, tuple]:
    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    cpu = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if cpu and flags:
                    break
    except OSError:
        pass
    return cpu or platform.processor() or platform.machine(), tuple(
        f for f in sorted(ISA_FLAGS) if f in flags)


def machine_key() -> dict:
    """{"cpu", "isa", "engine"}: the CPU model, its listed instruction sets, the version."""
    from . import __version__
    cpu, isa = _cpu()
    return {"cpu": cpu, "isa": list(isa), "engine": __version__}
