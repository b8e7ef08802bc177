"""What one accelerator can do: memory, dense bf16 FLOP/s and memory bandwidth.

The planner needs the memory to say what fits; the benchmark needs the peaks to turn
measured throughput into utilisation (MFU for compute-bound prefill and training,
bandwidth utilisation for memory-bound decode). Figures are the vendors' published
per-chip numbers. A CPU has no published peak, so it is measured: the median of a few
timed large fp32 matmuls and large array copies.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    name: str                  # short key, e.g. "v5p", "h100"
    hbm_bytes: int             # device memory
    flops: float               # dense bf16 FLOP/s (fp32 for the measured CPU)
    bandwidth: float           # memory bytes/s
    devices_per_host: int      # chips one host drives: a generation replica's size per host
    kinds: tuple[str, ...] = ()  # lower-case substrings of jax's `device_kind` that mean this
    ici_bandwidth: float = 0.0   # inter-chip bytes/s per chip (TPU ICI); 0: not tabled

    @property
    def platform(self) -> str:
        """jax's platform name for this kind of device."""
        return "cpu" if self.name == "cpu" else "tpu" if self.name.startswith("v") else "gpu"


DEVICES: dict[str, DeviceSpec] = {d.name: d for d in (
    # ICI: Cloud TPU's published per-chip interchip bandwidth (2400, 1600, 4800, 3584 Gbps).
    DeviceSpec("v4", 32 * GiB, 275e12, 1.2e12, 4, ("tpu v4",), 300e9),
    DeviceSpec("v5e", 16 * GiB, 197e12, 0.82e12, 4, ("tpu v5 lite", "tpu v5e"), 200e9),
    DeviceSpec("v5p", 95 * GiB, 459e12, 2.76e12, 4, ("tpu v5p", "tpu v5"), 600e9),
    DeviceSpec("v6e", 32 * GiB, 918e12, 1.64e12, 4, ("tpu v6 lite", "tpu v6e"), 448e9),
    # NVIDIA datasheets: the 40 GB A100 has 1.555 TB/s, the 80 GB SXM part 2.039 TB/s.
    DeviceSpec("a100-40gb", 40 * GiB, 312e12, 1.555e12, 8, ("a100",)),
    DeviceSpec("a100-80gb", 80 * GiB, 312e12, 2.039e12, 8, ("a100-sxm4-80gb", "a100 80gb")),
    DeviceSpec("h100", 80 * GiB, 989e12, 3.35e12, 8, ("h100",)),
    DeviceSpec("h100-pcie", 80 * GiB, 756e12, 2.0e12, 8, ("h100 pcie",)),
    DeviceSpec("h200", 141 * GiB, 989e12, 4.8e12, 8, ("h200",)),
)}


def host_cpu_spec() -> DeviceSpec:
    """This host as CPU devices: its RAM shared by the process's CPU devices; no peaks
    (see `measured_cpu_peak`), so planning a dry run on a laptop costs nothing."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    n = len(jax.local_devices(backend="cpu"))
    return DeviceSpec("cpu", ram // n, 0.0, 0.0, n)


def device_spec(kind: str) -> DeviceSpec | None:
    """A table entry from a short name ("v5p") or jax's `device_kind` ("TPU v5 lite").

    The longest matching `device_kind` substring wins, so "TPU v5 lite" is a v5e,
    not a v5p, and "NVIDIA A100-SXM4-80GB" is the 80 GB part. "cpu" is this host.
    """
    key = kind.strip().lower()
    if key == "cpu":
        return host_cpu_spec()
    if key in DEVICES:
        return DEVICES[key]
    hits = [(len(s), d) for d in DEVICES.values() for s in d.kinds if s in key]
    return max(hits, key=lambda h: h[0])[1] if hits else None


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(matmul_n: int = 2048, copy_mib: int = 256, repeats: int = 5) -> DeviceSpec:
    """This host's fp32 matmul FLOP/s and copy bandwidth (read + write), medians of runs.

    All of a process's CPU "devices" share these cores, so this is the whole host's peak.
    """
    cpu = jax.local_devices(backend="cpu")[0]
    key = jax.random.key(0)
    a = jax.device_put(jax.random.normal(key, (matmul_n, matmul_n), jnp.float32), cpu)
    flops = 2 * matmul_n ** 3 / _median_seconds(jax.jit(jnp.matmul), a, a, repeats=repeats)
    x = jax.device_put(jnp.zeros((copy_mib * 2 ** 20 // 4,), jnp.float32), cpu)
    bandwidth = 2 * x.nbytes / _median_seconds(jax.jit(lambda v: v + 1.0), x, repeats=repeats)
    return DeviceSpec("cpu", 0, flops, bandwidth, len(jax.local_devices(backend="cpu")))


@dataclasses.dataclass(frozen=True)
class SystemPeak:
    """The aggregate peak of a set of devices, and where the figures come from."""

    flops: float
    bandwidth: float
    source: str


def system_peak(devices: Sequence[jax.Device]) -> SystemPeak | None:
    """Sum of per-chip peaks; CPU devices of one process count as one measured host.

    None for an accelerator the table does not know (utilisation is then left blank).
    """
    first = devices[0]
    if first.platform == "cpu":
        hosts = len({d.process_index for d in devices})
        cpu = measured_cpu_peak()
        return SystemPeak(cpu.flops * hosts, cpu.bandwidth * hosts,
                          f"measured CPU x{hosts} host(s)")
    spec = device_spec(first.device_kind)
    if spec is None:
        return None
    n = len(devices)
    return SystemPeak(spec.flops * n, spec.bandwidth * n, f"{spec.name} table x{n}")
