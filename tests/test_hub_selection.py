"""Which files of a Hugging Face repo berth fetches (pure rules, no network)."""

import pytest

from berth.domain.model_reference import HubReference
from berth.models.hub import HubError, HubFile, HubListing
from berth.models.hub_selection import gguf_candidates, quantisation_of, select_hub_files

GB = 1_000_000_000


def listing(*files: tuple[str, int]) -> HubListing:
    return HubListing(repo="org/repo", commit="c" * 40, files=tuple(HubFile(p, s, None) for p, s in files))


def paths(selection) -> list[str]:
    return [f.path for f in selection.files]


@pytest.mark.parametrize("name, quant", [
    ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"),
    ("model.Q4_K_M.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
    ("gemma-3-270m-it-UD-Q4_K_XL.gguf", "Q4_K_XL"),
    ("ggml-model-q8_0.gguf", "Q8_0"),
    ("mistral_7b_q5_k_s.gguf", "Q5_K_S"),
    ("x-IQ3_XXS.gguf", "IQ3_XXS"),
    ("x-f16.gguf", "F16"),
    ("x-fp16.gguf", "F16"),
    ("x-BF16-00001-of-00002.gguf", "BF16"),
    ("Q6_K/x-00001-of-00003.gguf", "Q6_K"),
    ("gpt-oss-20b-mxfp4.gguf", "MXFP4"),
    ("plain.gguf", None),
    ("phi-q4.gguf", None),
])
def test_quantisation_from_the_name(name, quant):
    assert quantisation_of(name) == quant


def test_q4_k_m_is_preferred_and_readme_and_projector_are_ignored():
    repo = listing(
        ("README.md", 100), ("m-q2_k.gguf", 0.3 * GB), ("m-q4_k_m.gguf", 0.49 * GB), ("m-q8_0.gguf", 0.9 * GB),
        ("mmproj-m-f16.gguf", 0.1 * GB),
    )
    chosen = select_hub_files(repo, HubReference("org/repo"), None)
    assert chosen.format == "gguf"
    assert paths(chosen) == ["m-q4_k_m.gguf"] and chosen.entry == "m-q4_k_m.gguf"
    assert "Q4_K_M" in chosen.reason and "0.49 GB" in chosen.reason and "of 3 GGUF files" in chosen.reason
    assert "Q4_K_M when present, else the smallest" in chosen.reason


def test_without_q4_k_m_the_smallest_wins_and_a_split_set_counts_as_one():
    repo = listing(
        ("m-q8_0.gguf", 9 * GB),
        ("m-f16-00001-of-00002.gguf", 5 * GB), ("m-f16-00002-of-00002.gguf", 5 * GB),
        ("m-q6_k-00001-of-00002.gguf", 3 * GB), ("m-q6_k-00002-of-00002.gguf", 3 * GB),
    )
    assert len(gguf_candidates(repo.files)) == 3
    chosen = select_hub_files(repo, HubReference("org/repo"), "gguf")
    assert paths(chosen) == ["m-q6_k-00001-of-00002.gguf", "m-q6_k-00002-of-00002.gguf"]
    assert chosen.entry == "m-q6_k-00001-of-00002.gguf"
    assert "6.00 GB" in chosen.reason and "2 shards" in chosen.reason


def test_an_incomplete_split_set_is_not_a_candidate():
    repo = listing(("m-q4_k_m-00001-of-00003.gguf", GB), ("m-q4_k_m-00002-of-00003.gguf", GB), ("m-q8_0.gguf", 3 * GB))
    assert paths(select_hub_files(repo, HubReference("org/repo"), None)) == ["m-q8_0.gguf"]


def test_a_named_file_is_fetched_alone():
    repo = listing(("m-q4_k_m.gguf", GB), ("m-q8_0.gguf", 2 * GB))
    chosen = select_hub_files(repo, HubReference("org/repo", file="m-q8_0.gguf"), None)
    assert (chosen.format, paths(chosen), chosen.entry) == ("gguf", ["m-q8_0.gguf"], "m-q8_0.gguf")


def test_a_named_shard_brings_all_its_shards():
    repo = listing(*[(f"big-q4_k_m-0000{i}-of-00003.gguf", GB) for i in (1, 2, 3)], ("small.gguf", 1))
    chosen = select_hub_files(repo, HubReference("org/repo", file="big-q4_k_m-00002-of-00003.gguf"), None)
    assert paths(chosen) == [f"big-q4_k_m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert chosen.entry == "big-q4_k_m-00001-of-00003.gguf"


def test_a_named_file_that_is_not_there_lists_what_is():
    repo = listing(("m-q4_k_m.gguf", GB), ("m-q8_0.gguf", 2 * GB))
    with pytest.raises(HubError) as raised:
        select_hub_files(repo, HubReference("org/repo", file="m-q5_k_m.gguf"), None)
    assert raised.value.kind == "file_not_found"
    assert "m-q4_k_m.gguf" in str(raised.value) and "m-q8_0.gguf" in str(raised.value)
    assert "leave out" in str(raised.value)


def test_a_named_file_of_another_format_is_refused():
    repo = listing(("pytorch_model.bin", GB))
    with pytest.raises(HubError) as raised:
        select_hub_files(repo, HubReference("org/repo", file="pytorch_model.bin"), None)
    assert raised.value.kind == "no_model_files" and "PyTorch" in str(raised.value)


SAFETENSORS_REPO = listing(
    ("model-00001-of-00002.safetensors", 4 * GB), ("model-00002-of-00002.safetensors", 2 * GB),
    ("model.safetensors.index.json", 30_000), ("config.json", 700), ("generation_config.json", 200),
    ("tokenizer.json", 7_000_000), ("tokenizer_config.json", 9_000), ("special_tokens_map.json", 400),
    ("vocab.json", 2_000_000), ("merges.txt", 1_600_000), ("chat_template.jinja", 4_000),
    ("pytorch_model-00001-of-00002.bin", 4 * GB), ("pytorch_model-00002-of-00002.bin", 2 * GB),
    ("onnx/model.onnx", 6 * GB), ("model.onnx", 6 * GB), ("figure.png", 100_000), ("README.md", 5_000),
    ("original/consolidated.00.pth", 6 * GB), (".gitattributes", 1_500),
)
SAFETENSORS_SET = [
    "chat_template.jinja", "config.json", "generation_config.json", "merges.txt", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
    "tokenizer_config.json", "vocab.json",
]


@pytest.mark.parametrize("want", ["safetensors", None])
def test_the_safetensors_set_leaves_other_formats_out(want):
    chosen = select_hub_files(SAFETENSORS_REPO, HubReference("org/repo"), want)
    assert chosen.format == "safetensors" and chosen.entry == ""
    assert paths(chosen) == SAFETENSORS_SET
    assert "*.bin" in chosen.reason and "*.onnx" in chosen.reason and "6.00 GB" in chosen.reason


def test_mistral_consolidated_weights_are_left_out_when_hf_weights_exist():
    repo = listing(("consolidated.safetensors", 14 * GB), ("model-00001-of-00001.safetensors", 14 * GB),
                   ("params.json", 200), ("config.json", 600))
    assert paths(select_hub_files(repo, HubReference("org/repo"), "safetensors")) == [
        "config.json", "model-00001-of-00001.safetensors",
    ]


def test_auto_prefers_gguf_when_the_repo_has_both():
    repo = listing(("model.safetensors", 2 * GB), ("config.json", 600), ("model-Q4_K_M.gguf", GB))
    assert select_hub_files(repo, HubReference("org/repo"), None).format == "gguf"
    assert select_hub_files(repo, HubReference("org/repo"), "safetensors").format == "safetensors"


def test_asking_for_gguf_of_a_safetensors_repo_says_what_to_do():
    with pytest.raises(HubError) as raised:
        select_hub_files(SAFETENSORS_REPO, HubReference("org/repo"), "gguf")
    assert raised.value.kind == "no_model_files"
    assert "org/repo-GGUF" in str(raised.value) and "vLLM" in str(raised.value)


def test_a_repo_without_weights_berth_serves():
    repo = listing(("pytorch_model.bin", GB), ("config.json", 600), ("README.md", 100))
    with pytest.raises(HubError) as raised:
        select_hub_files(repo, HubReference("org/repo"), None)
    assert raised.value.kind == "no_model_files"
    assert "*.bin" in str(raised.value) and "GGUF" in str(raised.value)


def test_only_projectors_are_no_model():
    repo = listing(("mmproj-model-f16.gguf", GB))
    with pytest.raises(HubError) as raised:
        select_hub_files(repo, HubReference("org/repo"), "gguf")
    assert raised.value.kind == "no_model_files"


def test_hub_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(HubError("auth", "give a token")))
    assert (error.kind, str(error)) == ("auth", "give a token")
