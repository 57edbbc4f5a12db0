"""Read a model's size facts from its files' headers, never from its weights.

GGUF: the header (metadata key/values and tensor infos) is parsed here with the `gguf` package's
constants (value types, quantisation block sizes, key names; loaded without the rest of the
package, which would bring numpy into every worker: berth.models.gguf_constants).
`gguf.GGUFReader` itself is not used: it builds numpy views for every metadata item and took ~22 s and ~700 MB of RAM for the Gemma 3
270M file (262,144 vocabulary strings); this parser reads the same header through mmap in well
under a second and touches only the header's pages. Split GGUFs (`*-00001-of-00003.gguf`) add
their parts' tensors.

safetensors: a folder's config.json (layers, heads, KV heads, head dim, trained context, dtype;
a nested `text_config` wins) and each `*.safetensors` file's JSON header (tensor byte ranges).
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from pathlib import Path
from typing import Any

from berth.domain.model_facts import DEFAULT_KV_BYTES_PER_ELEMENT, ModelFacts
from berth.models.gguf_constants import constants as gguf

__all__ = ["ModelFilesUnreadable", "read_gguf_facts", "read_model_facts", "read_safetensors_facts"]

MAX_STRING_BYTES = 1 << 30
MAX_COUNT = 1 << 32
KEEP_ARRAY_ITEMS = 1 << 16  # numeric arrays longer than this are skipped, their length kept
MAX_SAFETENSORS_HEADER = 100 * 2**20

GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC = (
    gguf.GGML_QUANT_SIZES, gguf.GGUF_DEFAULT_ALIGNMENT, gguf.GGUF_MAGIC
)
GGMLQuantizationType, T, LlamaFileType = gguf.GGMLQuantizationType, gguf.GGUFValueType, gguf.LlamaFileType

SPLIT_NAME = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


class ModelFilesUnreadable(ValueError):
    """The model files are missing, truncated or not what their name says."""


def read_model_facts(path: str | Path) -> ModelFacts:
    """Facts of a .gguf file, a folder with one .gguf, or a safetensors folder (or one of its files)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFilesUnreadable(f"model path {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return read_gguf_facts(path)
        if path.suffix.lower() == ".safetensors":
            return read_safetensors_facts(path.parent, files=[path])
        raise ModelFilesUnreadable(f"{str(path)!r} is neither a .gguf nor a .safetensors file")
    if any(path.glob("*.safetensors")):
        return read_safetensors_facts(path)
    ggufs = sorted(p for p in path.glob("*.gguf") if not p.name.lower().startswith("mmproj"))
    firsts = [p for p in ggufs if not (m := SPLIT_NAME.match(p.name)) or int(m["part"]) == 1]
    if len(firsts) == 1:
        return read_gguf_facts(firsts[0])
    if not ggufs:
        raise ModelFilesUnreadable(f"folder {str(path)!r} has no .gguf or .safetensors files")
    raise ModelFilesUnreadable(
        f"folder {str(path)!r} has several GGUF models ({', '.join(p.name for p in firsts)}): name one file"
    )


# ---- GGUF --------------------------------------------------------------------------------------

_SCALARS = {
    T.UINT8: "B", T.INT8: "b", T.UINT16: "H", T.INT16: "h", T.UINT32: "I", T.INT32: "i",
    T.FLOAT32: "f", T.BOOL: "?", T.UINT64: "Q", T.INT64: "q", T.FLOAT64: "d",
}


class _ArrayLength(int):
    """An array that was skipped: only its length is kept."""


class _Header:
    """A streaming reader of a GGUF header over an mmap."""

    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer, self.path, self.pos = buffer, path, 0
        magic = self._raw("<I")
        if magic != GGUF_MAGIC:
            raise ModelFilesUnreadable(
                f"{path.name} is not a GGUF file: invalid magic {bytes(buffer[:4])!r} (expected b'GGUF')"
            )
        version = self._raw("<I")
        self.order = "<"
        if version & 0xFFFF == 0:  # written big-endian
            self.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in (2, 3):
            raise ModelFilesUnreadable(f"{path.name}: GGUF version {version} is not supported (2 or 3)")
        self.version = version

    def _raw(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        except struct.error:
            raise ModelFilesUnreadable(f"{self.path.name}: the GGUF header is truncated") from None
        self.pos += struct.calcsize(fmt)
        return value

    def scalar(self, code: str) -> Any:
        return self._raw(self.order + code)

    def count(self) -> int:
        value = self.scalar("Q")
        if value > MAX_COUNT:
            raise ModelFilesUnreadable(f"{self.path.name}: the GGUF header is corrupt (count {value})")
        return value

    def string(self) -> str:
        size = self.scalar("Q")
        if size > MAX_STRING_BYTES or self.pos + size > len(self.buffer):
            raise ModelFilesUnreadable(f"{self.path.name}: the GGUF header is corrupt or truncated")
        text = bytes(self.buffer[self.pos : self.pos + size]).decode("utf-8", errors="replace")
        self.pos += size
        return text

    def skip_strings(self, count: int) -> None:
        """Skip an array of strings (a vocabulary: 262,144 of them in Gemma 3), in one tight loop."""
        buffer, pos, end = self.buffer, self.pos, len(self.buffer)
        length_at = struct.Struct(self.order + "Q").unpack_from
        try:
            for _ in range(count):
                pos += 8 + length_at(buffer, pos)[0]
        except struct.error:
            pos = end + 1
        if pos > end:
            raise ModelFilesUnreadable(f"{self.path.name}: the GGUF header is corrupt or truncated")
        self.pos = pos

    def value(self, kind: int) -> Any:
        try:
            kind = T(kind)
        except ValueError:
            raise ModelFilesUnreadable(f"{self.path.name}: unknown GGUF value type {kind}") from None
        if kind is T.STRING:
            return self.string()
        if kind is T.ARRAY:
            item_kind, length = self.scalar("I"), self.count()
            if item_kind == T.STRING:
                self.skip_strings(length)
                return _ArrayLength(length)
            if item_kind not in _SCALARS:
                raise ModelFilesUnreadable(f"{self.path.name}: unsupported GGUF array of type {item_kind}")
            code = _SCALARS[T(item_kind)]
            if length > KEEP_ARRAY_ITEMS:
                self.pos += length * struct.calcsize(code)
                return _ArrayLength(length)
            fmt = f"{self.order}{length}{code}"
            try:
                values = list(struct.unpack_from(fmt, self.buffer, self.pos))
            except struct.error:
                raise ModelFilesUnreadable(f"{self.path.name}: the GGUF header is truncated") from None
            self.pos += struct.calcsize(fmt)
            return values
        return self.scalar(_SCALARS[kind])


def _gguf_header(path: Path) -> tuple[dict[str, Any], list[tuple[str, int, int, int]], int, int]:
    """(metadata, [(tensor name, bytes, offset, elements)], data start, file size) of one GGUF file."""
    size = path.stat().st_size
    if size < 24:
        raise ModelFilesUnreadable(f"{path.name} is not a GGUF file: only {size} bytes (invalid magic)")
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
        header = _Header(buffer, path)
        n_tensors, n_kv = header.count(), header.count()
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = header.string()
            metadata[key] = header.value(header.scalar("I"))
        tensors: list[tuple[str, int, int, int]] = []
        for _ in range(n_tensors):
            name = header.string()
            n_dims = header.scalar("I")
            if n_dims > 8:
                raise ModelFilesUnreadable(f"{path.name}: tensor {name!r} has {n_dims} dimensions (corrupt header)")
            dims = [header.scalar("Q") for _ in range(n_dims)]
            kind, offset = header.scalar("I"), header.scalar("Q")
            tensors.append((name, _tensor_bytes(path, name, kind, dims), offset, math.prod(dims)))
        alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT) or GGUF_DEFAULT_ALIGNMENT)
        start = header.pos + (-header.pos % alignment)
    end = max((offset + n for _, n, offset, _ in tensors), default=0)
    if start + end > size:
        raise ModelFilesUnreadable(
            f"{path.name} is truncated: it has {size} bytes, its tensors end at byte {start + end} "
            "(an incomplete download?)"
        )
    return metadata, tensors, start, size


def _tensor_bytes(path: Path, name: str, kind: int, dims: list[int]) -> int:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError):
        raise ModelFilesUnreadable(f"{path.name}: tensor {name!r} has unknown ggml type {kind}") from None
    return math.prod(dims) // block * type_size


def _first(values: Any) -> int | None:
    if values is None or isinstance(values, _ArrayLength):
        return None
    if isinstance(values, list):
        return max(values) if values else None
    return int(values)


def _split_parts(path: Path, metadata: dict[str, Any]) -> list[Path]:
    count = int(metadata.get("split.count", 1) or 1)
    if count <= 1:
        return []
    found = SPLIT_NAME.match(path.name)
    if not found:
        raise ModelFilesUnreadable(f"{path.name} is part of a {count}-file GGUF but is not named NAME-00001-of-{count:05d}.gguf")
    parts = [path.with_name(f"{found['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelFilesUnreadable(f"{path.name}: parts of the split GGUF are missing: {', '.join(missing)}")
    return [p for p in parts if p != path]


def read_gguf_facts(path: str | Path) -> ModelFacts:
    path = Path(path)
    metadata, tensors, _, file_bytes = _gguf_header(path)
    for part in _split_parts(path, metadata):
        _, more, _, more_bytes = _gguf_header(part)
        tensors += more
        file_bytes += more_bytes
    arch = metadata.get("general.architecture")
    key = lambda name: metadata.get(f"{arch}.{name}")  # noqa: E731
    heads, kv_heads = key("attention.head_count"), key("attention.head_count_kv")
    n_layers = _first(key("block_count"))
    n_heads = _first(heads)
    embedding = _first(key("embedding_length"))
    if kv_heads is None:
        kv_heads = heads  # llama.cpp's default: no grouped-query attention
    per_layer = list(kv_heads) if isinstance(kv_heads, list) and len(set(kv_heads)) > 1 else None
    head_dim = _first(key("attention.key_length"))
    if head_dim is None and embedding and n_heads:
        head_dim = embedding // n_heads
    vocab = _first(key("vocab_size"))
    if vocab is None and isinstance(metadata.get("tokenizer.ggml.tokens"), _ArrayLength):
        vocab = int(metadata["tokenizer.ggml.tokens"])
    file_type = metadata.get("general.file_type")
    try:
        quantization = LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        quantization = f"file type {file_type}"
    return ModelFacts(
        format="gguf",
        path=str(path),
        name=metadata.get("general.name") if isinstance(metadata.get("general.name"), str) else None,
        architecture=arch if isinstance(arch, str) else None,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=_first(kv_heads),
        kv_heads_per_layer=per_layer,
        embedding_length=embedding,
        head_dim=head_dim,
        value_head_dim=_first(key("attention.value_length")) or head_dim,
        trained_context=_first(key("context_length")),
        sliding_window=_first(key("attention.sliding_window")),
        vocab_size=vocab,
        quantization=quantization,
        n_params=sum(elements for *_, elements in tensors),
        weights_bytes=sum(n for _, n, _, _ in tensors),
        file_bytes=file_bytes,
        kv_bytes_per_element=DEFAULT_KV_BYTES_PER_ELEMENT,
    )


# ---- safetensors -------------------------------------------------------------------------------

_DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "float64": 8, "float16": 2, "half": 2, "bfloat16": 2}


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ModelFilesUnreadable(f"{path.name} is not a safetensors file: only {len(prefix)} bytes")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_SAFETENSORS_HEADER:
            raise ModelFilesUnreadable(f"{path.name} is not a safetensors file: header of {size} bytes")
        raw = file.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelFilesUnreadable(f"{path.name}: the safetensors header is not readable JSON") from None
    if not isinstance(header, dict):
        raise ModelFilesUnreadable(f"{path.name}: the safetensors header is not a JSON object")
    data_bytes = path.stat().st_size - 8 - size
    try:
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelFilesUnreadable(f"{path.name}: the safetensors header has a malformed tensor entry") from None
    if end > data_bytes:
        raise ModelFilesUnreadable(
            f"{path.name} is truncated: its tensors need {end} bytes of data, it has {data_bytes}"
        )
    return header


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFilesUnreadable(f"{path}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        return {}
    for nested in ("text_config", "llm_config", "language_config"):
        if isinstance(config.get(nested), dict):
            return {**config, **config[nested]}
    return config


def _pick(config: dict[str, Any], *names: str) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return None


def _count(config: dict[str, Any], *names: str) -> int | None:
    """The first of these keys that holds a positive whole number."""
    for name in names:
        value = config.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and value == int(value):
            return int(value)
    return None


def read_safetensors_facts(folder: str | Path, files: list[Path] | None = None) -> ModelFacts:
    folder = Path(folder)
    files = sorted(files if files is not None else folder.glob("*.safetensors"))
    if not files:
        raise ModelFilesUnreadable(f"folder {str(folder)!r} has no .safetensors files")
    weights = params = 0
    dtypes: dict[str, int] = {}
    for file in files:
        for name, tensor in _safetensors_header(file).items():
            if name == "__metadata__":
                continue
            begin, end = tensor["data_offsets"]
            weights += end - begin
            params += math.prod(tensor.get("shape") or [1])
            dtypes[tensor.get("dtype", "?")] = dtypes.get(tensor.get("dtype", "?"), 0) + end - begin
    config = _config(folder)
    n_layers = _count(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    n_heads = _count(config, "num_attention_heads", "n_head", "n_heads")
    kv_heads = _count(config, "num_key_value_heads", "n_kv_heads", "num_kv_heads")
    if kv_heads is None and config.get("multi_query"):
        kv_heads = 1
    if kv_heads is None:
        kv_heads = n_heads
    hidden = _count(config, "hidden_size", "n_embd", "d_model", "dim")
    head_dim = _count(config, "head_dim")
    if head_dim is None and hidden and n_heads:
        head_dim = hidden // n_heads
    dtype = str(_pick(config, "torch_dtype", "dtype") or "").lower()
    quantization = None
    if isinstance(config.get("quantization"), dict):  # MLX
        q = config["quantization"]
        quantization = f"{q.get('bits', '?')}-bit, group size {q.get('group_size', '?')}"
    elif isinstance(config.get("quantization_config"), dict):
        quantization = str(config["quantization_config"].get("quant_method") or "quantized")
    elif dtypes:
        quantization = max(dtypes, key=dtypes.get)
    model_type = config.get("model_type")
    return ModelFacts(
        format="safetensors",
        path=str(folder),
        name=folder.name,
        architecture=model_type if isinstance(model_type, str) else None,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=kv_heads,
        embedding_length=hidden,
        head_dim=head_dim,
        value_head_dim=head_dim,
        trained_context=_count(config, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length"),
        sliding_window=_count(config, "sliding_window"),
        vocab_size=_count(config, "vocab_size"),
        quantization=quantization,
        n_params=None if quantization and "bit" in quantization else params,
        weights_bytes=weights,
        file_bytes=sum(f.stat().st_size for f in files),
        kv_bytes_per_element=_DTYPE_BYTES.get(dtype, DEFAULT_KV_BYTES_PER_ELEMENT),
    )
