"""Tiny GGUF fixtures for tests: a random-weight llama model and a garbage file.

The tiny model is a real llama-architecture GGUF (2 layers, embedding 128,
SentencePiece-style vocab with byte fallback, ChatML chat template) that
llama.cpp loads and serves in a fraction of a second. Its weights are random,
so its output is gibberish; it exists to exercise the serving path.

    python -m berth.testing.tiny_gguf OUT.gguf
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

SEED = 1234
EMBEDDING_LENGTH = 128
FEED_FORWARD_LENGTH = 256
BLOCK_COUNT = 2
HEAD_COUNT = 4
HEAD_COUNT_KV = 2
CONTEXT_LENGTH = 2048
GARBAGE_SIZE = 64 * 1024

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece marks a word start with U+2581 ("▁").
WORD_START = "\u2581"
COMMON_WORDS = (
    "the be to of and a in that have it for not on with he as you do at this but his by "
    "from they we say her she or an will my one all would there their what so up out if "
    "about who get which go me when make can like time no just him know take people into "
    "year your good some could them see other than then now look only come its over think "
    "also back after use two how our work first well way even new want because any these "
    "give day most us hello world model deploy server test tiny token chat user assistant"
).split()


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """Special tokens, 256 byte-fallback tokens, then ordinary pieces."""
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256

    pieces: list[str] = [WORD_START]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    pieces += [WORD_START + c for c in string.ascii_lowercase]
    pieces += [WORD_START + w for w in COMMON_WORDS]
    pieces = list(dict.fromkeys(p for p in pieces if p not in tokens))
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)

    # Longer pieces score higher so SentencePiece merges prefer whole words.
    scores = [0.0] * (len(tokens) - len(pieces)) + [float(len(p)) - 10.0 for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: str | Path) -> Path:
    """Write a deterministic random-weight llama GGUF of a few MB to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    tokens, scores, types = _vocab()
    n_vocab, n_embd, n_ff = len(tokens), EMBEDDING_LENGTH, FEED_FORWARD_LENGTH
    head_dim = n_embd // HEAD_COUNT
    n_embd_kv = head_dim * HEAD_COUNT_KV

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(n_embd, dtype=np.float32)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("berth-tiny-llama")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(BLOCK_COUNT)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(HEAD_COUNT)
    writer.add_head_count_kv(HEAD_COUNT_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # all F32

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)

    # numpy shapes are (rows, cols) = (out, in); ggml reverses them.
    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for i in range(BLOCK_COUNT):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", norm())
        writer.add_tensor(f"{block}.attn_q.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"{block}.attn_k.weight", weight(n_embd_kv, n_embd))
        writer.add_tensor(f"{block}.attn_v.weight", weight(n_embd_kv, n_embd))
        writer.add_tensor(f"{block}.attn_output.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"{block}.ffn_norm.weight", norm())
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_garbage_gguf(path: str | Path) -> Path:
    """Write 64 KiB of deterministic random bytes under a ``.gguf`` name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(SEED).bytes(GARBAGE_SIZE))
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m berth.testing.tiny_gguf OUT.gguf", file=sys.stderr)
        return 2
    out = write_tiny_gguf(args[0])
    print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
