"""probe_hardware: what this node has. NVIDIA GPUs through NVML (nvidia-ml-py), Apple silicon
through platform + sysctl, CPU and RAM through psutil, whether a Docker engine answers, and which
engine runtimes are installed.

No NVML library, no GPU and no Docker daemon are the normal case on many nodes, not errors: the
probe then reports no GPUs / docker_available=False and says why in `notes`.

A probe takes a few milliseconds (the Docker ping is bounded by a 1 s timeout) and is called per
deployment, so its result is cached for CACHE_SECONDS.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import threading
import time

import psutil
import pynvml

from berth.domain.hardware import AppleSilicon, Gpu, Hardware
from berth.node.container_runtime import docker_configured

CACHE_SECONDS = 5.0
DOCKER_PING_TIMEOUT_S = 1
SYSCTL_TIMEOUT_S = 2

_lock = threading.Lock()
_cached: tuple[float, Hardware] | None = None


def probe_hardware(max_age_s: float = CACHE_SECONDS) -> Hardware:
    """This node's hardware, at most `max_age_s` old (0 probes afresh)."""
    global _cached
    with _lock:
        now = time.monotonic()
        if _cached is not None and max_age_s > 0 and now - _cached[0] <= max_age_s:
            return _cached[1]
        hardware = _probe()
        _cached = (time.monotonic(), hardware)
        return hardware


def clear_hardware_cache() -> None:
    global _cached
    with _lock:
        _cached = None


def _probe() -> Hardware:
    notes: list[str] = []
    memory = psutil.virtual_memory()
    gpus, driver, cuda = probe_nvidia(notes)
    return Hardware(
        os=platform.system(),
        arch=platform.machine(),
        cpu_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        ram_total=int(memory.total),
        ram_available=int(memory.available),
        gpus=gpus,
        driver_version=driver,
        cuda_version=cuda,
        apple_silicon=probe_apple_silicon(notes),
        docker_available=docker_answers(notes),
        mlx_lm_installed=_importable("mlx_lm") and _importable("mlx"),
        vllm_installed=_importable("vllm"),
        llama_server=os.environ.get("BERTH_LLAMA_SERVER") or shutil.which("llama-server"),
        xllamacpp_installed=_importable("xllamacpp"),
        notes=notes,
    )


# ---- NVIDIA ------------------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _cuda_version(encoded: int) -> str:
    """NVML's CUDA driver version 12040 -> '12.4'."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def probe_nvidia(notes: list[str]) -> tuple[list[Gpu], str | None, str | None]:
    """(GPUs, driver version, CUDA version) through NVML; ([], None, None) when NVML is absent."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        notes.append(f"no NVIDIA GPU visible: NVML: {error}")
        return [], None, None
    except OSError as error:  # a broken libnvidia-ml install
        notes.append(f"no NVIDIA GPU visible: NVML could not be loaded: {error}")
        return [], None, None
    try:
        driver = cuda = None
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as error:
            notes.append(f"NVIDIA driver version unknown: {error}")
        try:
            cuda = _cuda_version(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        except pynvml.NVMLError as error:
            notes.append(f"CUDA version unknown: {error}")
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as error:
            notes.append(f"NVML could not count GPUs: {error}")
            count = 0
        gpus = [gpu for index in range(count) if (gpu := _gpu(index, notes)) is not None]
        return gpus, driver, cuda
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _gpu(index: int, notes: list[str]) -> Gpu | None:
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except pynvml.NVMLError as error:
        notes.append(f"GPU {index} skipped: NVML: {error}")
        return None
    uuid = capability = None
    try:
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
    except pynvml.NVMLError:
        pass
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{major}.{minor}"
    except pynvml.NVMLError:
        pass
    return Gpu(
        index=index,
        name=name,
        memory_total=int(memory.total),
        memory_free=int(memory.free),
        memory_used=int(memory.used),
        uuid=uuid,
        compute_capability=capability,
    )


# ---- Apple silicon -----------------------------------------------------------------------------


def sysctl(name: str) -> str | None:
    """`sysctl -n NAME`, or None when it fails."""
    try:
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=SYSCTL_TIMEOUT_S, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def probe_apple_silicon(notes: list[str]) -> AppleSilicon | None:
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    chip = sysctl("machdep.cpu.brand_string") or "Apple silicon"
    memsize = sysctl("hw.memsize")
    try:
        unified = int(memsize) if memsize else int(psutil.virtual_memory().total)
    except ValueError:
        notes.append(f"sysctl hw.memsize said {memsize!r}: using psutil's total memory")
        unified = int(psutil.virtual_memory().total)
    return AppleSilicon(chip=chip, unified_memory=unified)


# ---- Docker and engine runtimes ----------------------------------------------------------------


def docker_answers(notes: list[str]) -> bool:
    """Whether a Docker engine answers a ping within DOCKER_PING_TIMEOUT_S. Never raises."""
    if not docker_configured():
        # nothing to ask: and the Docker SDK (~8 MB, with requests) stays out of this process
        notes.append("no Docker engine: DOCKER_HOST is not set and there is no /var/run/docker.sock")
        return False
    try:
        import docker

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
    except Exception as error:  # no DOCKER_HOST, bad config, docker SDK missing
        notes.append(f"no Docker engine: {_first_line(error)}")
        return False
    try:
        client.ping()
        return True
    except Exception as error:
        notes.append(f"no Docker engine: {_first_line(error)}")
        return False
    finally:
        client.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
