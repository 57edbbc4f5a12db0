"""Model facts, read once per version of the files: the worker keeps what it read, keyed by path and
the size and modification time of the files that make up the model.

Reading a GGUF header walks its vocabulary (262,144 strings for Gemma 3: ~50 ms) and every
deployment, restart and retry plans again; the files rarely change between them. Any change to
the model's folder (a file added, replaced, grown) changes the key, so a stale answer cannot be
served.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from berth.domain.model_facts import ModelFacts
from berth.models.facts import read_model_facts

MAX_ENTRIES = 64

_lock = threading.Lock()
_facts: OrderedDict[tuple, ModelFacts] = OrderedDict()


def fingerprint(path: Path) -> tuple:
    """The path, and name, size and mtime of every entry of the folder the model lives in (split
    GGUF parts, config.json and safetensors files sit beside the file named)."""
    folder = path if path.is_dir() else path.parent
    entries = []
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                stat = entry.stat()
            except OSError:
                continue
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return (str(path), tuple(sorted(entries)))


def cached_model_facts(path: str | Path) -> ModelFacts:
    """read_model_facts(path), from memory when the files have not changed since it was read."""
    try:
        key = fingerprint(Path(path).expanduser().absolute())
    except OSError:
        return read_model_facts(path)  # missing or unreadable: let the reader say what is wrong
    with _lock:
        if key in _facts:
            _facts.move_to_end(key)
            return _facts[key]  # frozen: safe to share
    facts = read_model_facts(path)
    with _lock:
        _facts[key] = facts
        while len(_facts) > MAX_ENTRIES:
            _facts.popitem(last=False)
    return facts


def clear_model_facts_cache() -> None:
    with _lock:
        _facts.clear()
