"""How a deployment's `model` is read: local path, URL (with an optional sha256), hub repo."""

import pytest

from berth.domain.model_reference import (
    BadModelReference,
    HubReference,
    LocalReference,
    UrlReference,
    parse_model_reference,
)

SHA = "ab" * 32


@pytest.mark.parametrize(
    "text, exists, expected",
    [
        ("/srv/models/q.gguf", True, LocalReference("/srv/models/q.gguf")),
        ("/srv/models/absent.gguf", False, LocalReference("/srv/models/absent.gguf")),
        ("./models/q.gguf", False, LocalReference("./models/q.gguf")),
        ("models/q.gguf", True, LocalReference("models/q.gguf")),  # a path that exists wins
        ("models/q.gguf", False, LocalReference("models/q.gguf")),  # a model file name is a path
        ("org/weights.bin", False, LocalReference("org/weights.bin")),
        ("Qwen/Qwen2.5-0.5B-Instruct", False, HubReference("Qwen/Qwen2.5-0.5B-Instruct")),
        ("Qwen/Qwen2.5-0.5B-Instruct", True, LocalReference("Qwen/Qwen2.5-0.5B-Instruct")),
        ("hf:org/repo", False, HubReference("org/repo")),
        ("hf:org/repo@v1.0", False, HubReference("org/repo", revision="v1.0")),
        ("hf:org/repo:sub/model-q8_0.gguf", False, HubReference("org/repo", file="sub/model-q8_0.gguf")),
        ("hf:org/repo@abc123:m.gguf", False, HubReference("org/repo", "abc123", "m.gguf")),
        ("https://h.example/a/q4.gguf", False, UrlReference("https://h.example/a/q4.gguf", "q4.gguf")),
        (f"http://h:8080/q.gguf#sha256={SHA.upper()}", False, UrlReference("http://h:8080/q.gguf", "q.gguf", SHA)),
        ("https://h.example/My%20Model.gguf?download=1", False,
         UrlReference("https://h.example/My%20Model.gguf?download=1", "My Model.gguf")),
    ],
)
def test_references(text, exists, expected):
    assert parse_model_reference(text, exists=exists) == expected


@pytest.mark.parametrize(
    "text, says",
    [
        ("https://host.example/", "does not end with a file name"),
        ("https:///q.gguf", "not a URL with a host"),
        ("https://h.example/q.gguf#md5=abc", "#sha256=<64 hex digits>"),
        ("https://h.example/q.gguf#sha256=123", "#sha256=<64 hex digits>"),
        ("hf:", "does not name a Hugging Face repo"),
        ("hf:org/repo@", "empty revision"),
        ("hf:org/repo:", "empty file name"),
        ("hf:org/repo:../../etc/passwd", "inside the repo"),
    ],
)
def test_bad_references_say_how_to_write_one(text, says):
    with pytest.raises(BadModelReference, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_model_reference(text)


def test_display_round_trips_hub_references():
    for text in ("hf:org/repo", "hf:org/repo@v2", "hf:org/repo@v2:a.gguf"):
        assert parse_model_reference(text).display == text
