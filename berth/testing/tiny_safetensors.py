"""A tiny random-weight llama model in the Hugging Face layout, for tests: config.json,
model.safetensors (float32, written here byte by byte) and a byte-level BPE tokenizer trained here
on a few sentences, with a ChatML chat template. About 0.5 MB; mlx_lm.server loads it in about a
second and answers (gibberish) chat completions.
"""

import json
import struct
from pathlib import Path

import numpy as np

HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
VOCAB = 384
CONTEXT = 2048
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Say hi to the model and it says hello back.",
    "The quick brown fox jumps over the lazy dog.",
    "berth deploys models and keeps them serving, one workflow per deployment.",
    "Tiny models answer quickly: hello, hi, yes, no, maybe, thanks.",
]
_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """The safetensors format: u64 header length, JSON header (names, dtypes, shapes, offsets), data."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    blobs, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for data in blobs:
            handle.write(data)
    return path


def llama_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {"model.embed_tokens.weight": weight(VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        tensors |= {
            f"{prefix}.self_attn.q_proj.weight": weight(HEADS * head_dim, HIDDEN),
            f"{prefix}.self_attn.k_proj.weight": weight(KV_HEADS * head_dim, HIDDEN),
            f"{prefix}.self_attn.v_proj.weight": weight(KV_HEADS * head_dim, HIDDEN),
            f"{prefix}.self_attn.o_proj.weight": weight(HIDDEN, HEADS * head_dim),
            f"{prefix}.mlp.gate_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.up_proj.weight": weight(INTERMEDIATE, HIDDEN),
            f"{prefix}.mlp.down_proj.weight": weight(HIDDEN, INTERMEDIATE),
            f"{prefix}.input_layernorm.weight": np.ones(HIDDEN, np.float32),
            f"{prefix}.post_attention_layernorm.weight": np.ones(HIDDEN, np.float32),
        }
    tensors["model.norm.weight"] = np.ones(HIDDEN, np.float32)
    return tensors


def write_tokenizer(folder: Path) -> dict[str, int]:
    """A byte-level BPE tokenizer (any text encodes), trained on CORPUS; returns the special ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "<|im_end|>",
                "pad_token": "</s>",
                "model_max_length": CONTEXT,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=1,
        )
    )
    return ids


def write_tiny_safetensors(folder: Path, model_type: str = "llama") -> Path:
    """Write the model into `folder` (created); returns the folder. `model_type` other than llama
    makes a model that no engine knows (a loading failure)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["<|im_end|>"],
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    write_safetensors(folder / "model.safetensors", llama_tensors())
    return folder
