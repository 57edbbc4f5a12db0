"""The hardware probe: NVML faked only at the pynvml call boundary, Apple silicon only at the platform
probe (platform.system/machine and the `sysctl` process), and the real probe of this machine."""

import asyncio
import os
import platform
import shutil
import subprocess
import time
from types import SimpleNamespace

import pynvml
import pytest

from berth.node import hardware as probe
from berth.domain.hardware import Hardware
from berth.engines.selection import select_engine

GIB = 2**30


@pytest.fixture(autouse=True)
def _fresh_probe():
    probe.clear_hardware_cache()
    yield
    probe.clear_hardware_cache()


class FakeNvml:
    """What NVML would answer for these GPUs; installed over pynvml's functions."""

    def __init__(self, gpus, driver="550.54.15", cuda=12040, init_error=None, broken=()):
        self.gpus, self.driver, self.cuda = gpus, driver, cuda
        self.init_error, self.broken = init_error, set(broken)
        self.inits = self.shutdowns = 0

    def install(self, monkeypatch):
        def init():
            self.inits += 1
            if self.init_error is not None:
                raise pynvml.NVMLError(self.init_error)

        def shutdown():
            self.shutdowns += 1

        def handle(index):
            if index >= len(self.gpus):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return ("handle", index)

        def memory(h):
            if h[1] in self.broken:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            total, free = self.gpus[h[1]][1:]
            return SimpleNamespace(total=total, free=free, used=total - free)

        patches = {
            "nvmlInit": init,
            "nvmlShutdown": shutdown,
            "nvmlSystemGetDriverVersion": lambda: self.driver,
            "nvmlSystemGetCudaDriverVersion": lambda: self.cuda,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetName": lambda h: self.gpus[h[1]][0],
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h[1]:08d}",
            "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0),
        }
        for name, fake in patches.items():
            monkeypatch.setattr(pynvml, name, fake)
        return self


def test_two_nvidia_gpus(monkeypatch):
    nvml = FakeNvml([("NVIDIA H200", 141 * GIB, 139 * GIB), ("NVIDIA H200", 141 * GIB, 20 * GIB)]).install(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0)
    assert [gpu.index for gpu in hardware.gpus] == [0, 1]
    first = hardware.gpus[0]
    assert (first.name, first.memory_total, first.memory_free, first.memory_used) == (
        "NVIDIA H200", 141 * GIB, 139 * GIB, 2 * GIB,
    )
    assert first.uuid == "GPU-00000000" and first.compute_capability == "9.0"
    assert hardware.gpus[1].memory_free == 20 * GIB
    assert hardware.driver_version == "550.54.15"
    assert hardware.cuda_version == "12.4"
    assert hardware.has_nvidia_gpu
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_old_nvml_bindings_returning_bytes(monkeypatch):
    FakeNvml([(b"Tesla T4", 16 * GIB, 15 * GIB)], driver=b"470.82.01", cuda=11040).install(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0)
    assert hardware.gpus[0].name == "Tesla T4"
    assert (hardware.driver_version, hardware.cuda_version) == ("470.82.01", "11.4")


@pytest.mark.parametrize(
    "error, words",
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"),
    ],
)
def test_no_nvml_is_no_gpu_not_an_error(monkeypatch, error, words):
    nvml = FakeNvml([], init_error=error).install(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0)
    assert hardware.gpus == [] and hardware.driver_version is None and hardware.cuda_version is None
    assert any(words in note for note in hardware.notes), hardware.notes
    assert nvml.shutdowns == 0  # nothing to shut down when init failed


def test_a_lost_gpu_is_skipped_and_noted(monkeypatch):
    nvml = FakeNvml(
        [("NVIDIA A100", 80 * GIB, 79 * GIB), ("NVIDIA A100", 80 * GIB, 79 * GIB)], broken={1}
    ).install(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0)
    assert [gpu.index for gpu in hardware.gpus] == [0]
    assert any("GPU 1 skipped" in note and "GPU is lost" in note for note in hardware.notes), hardware.notes
    assert nvml.shutdowns == 1


def test_gpus_make_safetensors_go_to_vllm_when_docker_answers(monkeypatch):
    FakeNvml([("NVIDIA H200", 141 * GIB, 139 * GIB)]).install(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0).model_copy(update={"docker_available": True})
    assert select_engine("safetensors", hardware).engine == "vllm"


def test_the_probe_is_cached_briefly(monkeypatch):
    nvml = FakeNvml([("NVIDIA L4", 24 * GIB, 23 * GIB)]).install(monkeypatch)
    first = probe.probe_hardware()
    assert probe.probe_hardware() is first
    assert nvml.inits == 1
    fresh = probe.probe_hardware(max_age_s=0)
    assert fresh is not first and nvml.inits == 2


# ---- Apple silicon, faked at the platform probe ------------------------------------------------


def _fake_mac(monkeypatch, machine="arm64", sysctl=None):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: machine)
    real_run = subprocess.run
    values = {"machdep.cpu.brand_string": "Apple M3 Max", "hw.memsize": str(64 * GIB)} if sysctl is None else sysctl
    calls = []

    def run(argv, *args, **kwargs):
        if list(argv[:2]) == ["sysctl", "-n"]:
            calls.append(argv[2])
            if argv[2] not in values:
                raise subprocess.CalledProcessError(1, argv)
            return subprocess.CompletedProcess(argv, 0, stdout=values[argv[2]] + "\n", stderr="")
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_apple_silicon(monkeypatch):
    calls = _fake_mac(monkeypatch)
    hardware = probe.probe_hardware(max_age_s=0)
    assert (hardware.os, hardware.arch) == ("Darwin", "arm64")
    assert hardware.apple_silicon is not None
    assert hardware.apple_silicon.chip == "Apple M3 Max"
    assert hardware.apple_silicon.unified_memory == 64 * GIB
    assert set(calls) == {"machdep.cpu.brand_string", "hw.memsize"}
    assert "Apple M3 Max with 64.0 GiB unified memory" in hardware.summary()
    # What the selection makes of it: gguf to llama.cpp, safetensors to MLX when it is installed.
    assert select_engine("gguf", hardware).engine == "llamacpp"
    mac_with_mlx = hardware.model_copy(update={"mlx_lm_installed": True})
    assert select_engine("safetensors", mac_with_mlx).engine == "mlx"


def test_apple_silicon_when_sysctl_fails(monkeypatch):
    _fake_mac(monkeypatch, sysctl={})
    hardware = probe.probe_hardware(max_age_s=0)
    assert hardware.apple_silicon.chip == "Apple silicon"
    assert hardware.apple_silicon.unified_memory == hardware.ram_total


def test_an_intel_mac_is_not_apple_silicon(monkeypatch):
    calls = _fake_mac(monkeypatch, machine="x86_64")
    hardware = probe.probe_hardware(max_age_s=0)
    assert hardware.apple_silicon is None and calls == []


# ---- the real probe on this machine ---------------------------------------------------------


def test_the_real_probe_of_this_machine():
    started = time.perf_counter()
    hardware = probe.probe_hardware(max_age_s=0)
    elapsed = time.perf_counter() - started
    assert isinstance(hardware, Hardware)
    assert hardware.os == platform.system() and hardware.arch == platform.machine()
    assert hardware.cpu_cores >= 1
    assert 0 < hardware.ram_available <= hardware.ram_total
    assert hardware.xllamacpp_installed  # a dependency of berth
    assert elapsed < 5, f"the probe took {elapsed:.2f} s"
    if shutil.which("nvidia-smi") is None:
        assert hardware.gpus == [] and hardware.driver_version is None
        assert any("NVML" in note for note in hardware.notes), hardware.notes
    no_daemon = not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock")
    if no_daemon:
        assert hardware.docker_available is False


def test_no_docker_daemon_is_answered_fast():
    if os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock"):
        pytest.skip("a Docker engine may be here")
    notes: list[str] = []
    started = time.perf_counter()
    assert probe.docker_answers(notes) is False
    assert time.perf_counter() - started < 1.5
    assert notes and notes[0].startswith("no Docker engine")


def test_an_unreachable_docker_host_is_bounded_by_the_timeout(monkeypatch):
    # 192.0.2.0/24 is TEST-NET-1: never routed, so the connection can only time out.
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")
    started = time.perf_counter()
    assert probe.docker_answers([]) is False
    assert time.perf_counter() - started < probe.DOCKER_PING_TIMEOUT_S + 2


async def test_the_probe_in_a_thread():
    hardware = await asyncio.to_thread(probe.probe_hardware)
    assert isinstance(hardware, Hardware) and hardware.cpu_cores >= 1
