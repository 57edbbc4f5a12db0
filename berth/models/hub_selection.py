"""Which files of a Hugging Face repo to fetch for an engine (pure: names and sizes in, choice out).

    a file named (hf:org/repo:x.gguf)  that file; one shard of a split GGUF (-00001-of-00003) brings all
    GGUF (llama.cpp)                   one model: Q4_K_M when the repo has it, else the smallest; vision
                                       projectors (mmproj) are not models; a split set counts as one
    safetensors (vLLM, MLX)            the weights at the repo's top level with their config and tokenizer
                                       files, and nothing of the other formats a repo often also carries
                                       (*.bin, *.pt, *.onnx, *.gguf, images)
    no format asked for                GGUF when the repo has any, else safetensors

Repos hold many variants of one model; fetching all of them would cost gigabytes for nothing, so the
choice is made here, and said (`reason`) so that the user knows what runs and how to ask for another.
"""

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from berth.domain.model_format import format_of_name
from berth.domain.model_reference import HubReference
from berth.models.hub import HubError, HubFile, HubListing

PREFERRED_QUANT = "Q4_K_M"
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
QUANT = re.compile(
    r"(?:^|(?<=[-._]))"
    r"(?P<quant>i?q[1-8]_(?:k(?:_(?:xl|[sml]))?|[01](?:_[48]_[48])?|xxs|xs|nl|[sml])"
    r"|tq[12]_0|bf16|fp16|f16|f32|mxfp4)"
    r"(?=[-._]|$)",
    re.IGNORECASE,
)
PROJECTOR = re.compile(r"mmproj|projector", re.IGNORECASE)
CONFIG_FILES = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json",
    "preprocessor_config.json", "processor_config.json",
}
CONFIG_PATTERNS = (re.compile(r"^chat_template\..+$"), re.compile(r"^.+\.safetensors\.index\.json$"),
                   re.compile(r"^.+\.tiktoken$"))


@dataclass(frozen=True)
class HubSelection:
    format: str  # "gguf" or "safetensors"
    files: tuple[HubFile, ...]  # exactly what to download
    entry: str  # what the engine gets, relative to the snapshot: the GGUF (first shard), or "" (the folder)
    reason: str  # shown to the user


@dataclass(frozen=True)
class GgufCandidate:
    """One GGUF model of the repo: a single file, or all shards of a split set."""

    files: tuple[HubFile, ...]  # shards in order

    @property
    def entry(self) -> str:
        return self.files[0].path

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)

    @property
    def quant(self) -> str | None:
        return quantisation_of(self.entry)


def quantisation_of(path: str) -> str | None:
    """'Q4_K_M', 'Q8_0', 'IQ4_XS', 'F16', 'BF16'... from a GGUF's name (or its folder's), or None."""
    for part in reversed(PurePosixPath(path).parts):
        stem = SPLIT_GGUF.sub(r"\g<stem>", part)
        stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
        found = QUANT.findall(stem)
        if found:
            return found[-1].upper().replace("FP16", "F16")
    return None


def select_hub_files(listing: HubListing, ref: HubReference, want_format: str | None) -> HubSelection:
    """What to fetch of `listing` for `ref` (the file it names, if any) and an engine that reads
    `want_format` ("gguf", "safetensors", or None: whichever the repo has, GGUF first)."""
    if want_format not in (None, "gguf", "safetensors"):
        raise ValueError(f"want_format must be 'gguf', 'safetensors' or None, not {want_format!r}")
    if ref.file:
        return _named(listing, ref)
    candidates = gguf_candidates(listing.files)
    weights = _safetensors_weights(listing.files)
    if want_format == "gguf" or (want_format is None and candidates):
        if not candidates:
            raise HubError(
                "no_model_files",
                f"{_source(listing, ref)} has no GGUF model file, which llama.cpp needs ({_summary(listing.files)}). "
                f"Deploy a GGUF conversion of it (often a repo named like '{listing.repo}-GGUF'), or use an engine "
                "that reads safetensors (vLLM, MLX).",
            )
        return _choose_gguf(candidates)
    if not weights:
        wanted = "safetensors weights, which vLLM and MLX read" if want_format else "GGUF or safetensors weights"
        raise HubError(
            "no_model_files",
            f"{_source(listing, ref)} has no {wanted} ({_summary(listing.files)}). berth serves GGUF (llama.cpp) "
            "and safetensors (vLLM, MLX) models: pick a repo that has them, or name the file with hf:org/repo:file.",
        )
    return _safetensors_set(listing.files, weights)


def gguf_candidates(files: tuple[HubFile, ...]) -> list[GgufCandidate]:
    """The GGUF models of a repo: single files, and complete split sets (vision projectors left out)."""
    singles, shards = [], {}
    for file in files:
        name = PurePosixPath(file.path).name
        if not name.lower().endswith(".gguf") or PROJECTOR.search(name):
            continue
        split = SPLIT_GGUF.match(file.path)
        if split:
            shards.setdefault((split["stem"], int(split["count"])), {})[int(split["index"])] = file
        else:
            singles.append(GgufCandidate((file,)))
    for (_, count), found in shards.items():
        if sorted(found) == list(range(1, count + 1)):  # an incomplete set cannot be loaded
            singles.append(GgufCandidate(tuple(found[i] for i in sorted(found))))
    return sorted(singles, key=lambda c: c.entry)


def _choose_gguf(candidates: list[GgufCandidate]) -> HubSelection:
    preferred = [c for c in candidates if c.quant == PREFERRED_QUANT]
    pool = preferred or candidates
    chosen = min(pool, key=lambda c: (c.size is None, c.size or 0, c.entry))
    described = ", ".join(x for x in (
        f"{len(chosen.files)} shards" if len(chosen.files) > 1 else "",
        chosen.quant or "",
        _gigabytes(chosen.size),
    ) if x)
    rule = f"{PREFERRED_QUANT} when present, else the smallest"
    reason = (
        f"chose {chosen.entry} ({described}) of {len(candidates)} GGUF file{'s' if len(candidates) != 1 else ''}: "
        f"{rule}; name another with hf:org/repo:<file.gguf>"
    )
    return HubSelection(format="gguf", files=chosen.files, entry=chosen.entry, reason=reason)


def _named(listing: HubListing, ref: HubReference) -> HubSelection:
    named = listing.file(ref.file)
    if named is None:
        ggufs = [c.entry for c in gguf_candidates(listing.files)]
        offer = f"its GGUF files: {_listed(ggufs)}" if ggufs else _summary(listing.files)
        raise HubError(
            "file_not_found",
            f"{_source(listing, ref)} has no file '{ref.file}' ({offer}). Name one of its files "
            f"(hf:{listing.repo}:<file>), or leave out ':{ref.file}' and berth chooses.",
        )
    fmt = format_of_name(named.path)
    if fmt == "gguf":
        split = SPLIT_GGUF.match(named.path)
        if not split:
            return HubSelection("gguf", (named,), named.path, f"{named.path}, as named ({_gigabytes(named.size)})")
        chosen = next((c for c in gguf_candidates(listing.files) if named in c.files), None)
        if chosen is None:
            raise HubError(
                "file_not_found",
                f"{named.path} is one shard of a split GGUF, and {_source(listing, ref)} lacks some of its "
                f"{int(split['count'])} shards; name a complete model instead.",
            )
        reason = f"{chosen.entry} and its {len(chosen.files) - 1} other shards, as named ({_gigabytes(chosen.size)})"
        return HubSelection("gguf", chosen.files, chosen.entry, reason)
    if fmt == "safetensors":
        return _safetensors_set(listing.files, [named])
    raise HubError(
        "no_model_files",
        f"'{named.path}' is not a model berth can serve ({(fmt or 'unknown format').removeprefix('unsupported:')}): "
        "berth serves GGUF (llama.cpp) and safetensors (vLLM, MLX); name a .gguf or .safetensors file.",
    )


def _safetensors_weights(files: tuple[HubFile, ...]) -> list[HubFile]:
    """Top-level *.safetensors; Mistral's `consolidated` copy is left out when the HF-format ones exist."""
    weights = [f for f in files if "/" not in f.path and f.path.lower().endswith(".safetensors")]
    usual = [f for f in weights if not f.path.lower().startswith("consolidated")]
    return usual or weights


def _is_config(path: str) -> bool:
    return "/" not in path and (path in CONFIG_FILES or any(p.match(path) for p in CONFIG_PATTERNS))


def _safetensors_set(files: tuple[HubFile, ...], weights: list[HubFile]) -> HubSelection:
    configs = [f for f in files if _is_config(f.path)]
    chosen = tuple(sorted(weights + configs, key=lambda f: f.path))
    size = sum(f.size or 0 for f in weights)
    left_out = sorted({
        PurePosixPath(f.path).suffix.lower() for f in files if format_of_name(f.path) not in (None, "safetensors")
    })
    reason = (
        f"chose the safetensors weights ({len(weights)} file{'s' if len(weights) != 1 else ''}, {_gigabytes(size)}) "
        f"with {len(configs)} config and tokenizer files"
    )
    if left_out:
        reason += f"; left out the repo's other formats ({', '.join('*' + s for s in left_out)})"
    return HubSelection(format="safetensors", files=chosen, entry="", reason=reason)


def _source(listing: HubListing, ref: HubReference) -> str:
    return f"hf:{listing.repo}" + (f"@{ref.revision}" if ref.revision else "")


def _gigabytes(size: int | None) -> str:
    return "size unknown" if size is None else f"{size / 1e9:.2f} GB"


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _summary(files: tuple[HubFile, ...]) -> str:
    """What a repo holds, briefly: 'it has 3 *.bin, README.md, config.json'."""
    if not files:
        return "it has no files"
    counts: dict[str, int] = {}
    for file in files:
        suffix = PurePosixPath(file.path).suffix.lower()
        key = f"*{suffix}" if suffix and suffix not in (".json", ".md", ".txt") else file.path
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{n} {key}" if n > 1 else key for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "it has " + _listed(parts)
