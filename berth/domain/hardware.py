"""What a node has: CPU, RAM, GPUs, Apple silicon, Docker, and which engine runtimes are installed.

Pure data, filled by the probe in `berth.node.hardware` (or by a test). Memory is in bytes.
"""

from pydantic import BaseModel, ConfigDict, Field


class Gpu(BaseModel):
    """One NVIDIA GPU as NVML reports it."""

    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    memory_total: int
    memory_free: int
    memory_used: int | None = None
    uuid: str | None = None
    compute_capability: str | None = None  # "9.0"


class AppleSilicon(BaseModel):
    """An Apple silicon Mac: the chip and its unified memory (shared by CPU and GPU)."""

    model_config = ConfigDict(frozen=True)

    chip: str  # "Apple M2 Pro"
    unified_memory: int


class Hardware(BaseModel):
    model_config = ConfigDict(frozen=True)

    os: str  # platform.system(): "Linux", "Darwin", "Windows"
    arch: str  # platform.machine(): "x86_64", "arm64", "aarch64"
    cpu_cores: int  # logical cores
    ram_total: int
    ram_available: int  # what new allocations can get now (psutil's "available")
    gpus: list[Gpu] = Field(default_factory=list)  # NVIDIA GPUs; empty without NVML or GPUs
    driver_version: str | None = None  # NVIDIA driver, "550.54.15"
    cuda_version: str | None = None  # the CUDA version the driver supports, "12.4"
    apple_silicon: AppleSilicon | None = None
    docker_available: bool = False  # a Docker engine answered a ping
    mlx_lm_installed: bool = False  # `mlx_lm` (and `mlx`) importable: mlx_lm.server can run
    vllm_installed: bool = False  # `vllm` importable: native `vllm serve` can run
    llama_server: str | None = None  # path of a `llama-server` binary, if any
    xllamacpp_installed: bool = False  # llama.cpp's server from the xllamacpp wheel
    notes: list[str] = Field(default_factory=list)  # what the probe could not see, and why

    @property
    def has_nvidia_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def is_apple_silicon(self) -> bool:
        return self.apple_silicon is not None

    @property
    def llamacpp_native(self) -> bool:
        return bool(self.llama_server) or self.xllamacpp_installed

    def summary(self) -> str:
        """One line for reasons and logs: 'Linux x86_64, 2 cores, 23.5 GiB RAM available, no NVIDIA GPU'."""
        parts = [f"{self.os} {self.arch}", f"{self.cpu_cores} cores", f"{gib(self.ram_available)} RAM available"]
        if self.apple_silicon:
            parts.append(f"{self.apple_silicon.chip} with {gib(self.apple_silicon.unified_memory)} unified memory")
        if self.gpus:
            names = ", ".join(f"{gpu.name} ({gib(gpu.memory_free)} free)" for gpu in self.gpus)
            parts.append(f"{len(self.gpus)} NVIDIA GPU{'s' if len(self.gpus) > 1 else ''}: {names}")
        else:
            parts.append("no NVIDIA GPU")
        parts.append("Docker answers" if self.docker_available else "no Docker engine")
        return ", ".join(parts)


def gib(n_bytes: int | float) -> str:
    """Bytes as a short human size: '1.5 GiB', '253 MiB', '12 KiB'."""
    value = float(n_bytes)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f} {unit}" if scaled < 100 else f"{scaled:.0f} {unit}"
    return f"{int(value)} B"
