"""What a model's files say about its size: read from a GGUF header or a safetensors folder's
config.json and tensor headers (by `berth.models.facts`), never from the weights."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# llama.cpp's KV cache is f16 unless told otherwise (--cache-type-k/v); vLLM and MLX keep it in the
# model's dtype, which is 16-bit for nearly every release.
DEFAULT_KV_BYTES_PER_ELEMENT = 2


class ModelFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: Literal["gguf", "safetensors"]
    path: str
    name: str | None = None
    architecture: str | None = None  # GGUF general.architecture, or config.json's model_type
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None  # the largest, where layers differ
    kv_heads_per_layer: list[int] | None = None  # only where the file gives one value per layer
    embedding_length: int | None = None
    head_dim: int | None = None  # per-head width of a key
    value_head_dim: int | None = None  # per-head width of a value (equal to head_dim for most models)
    trained_context: int | None = None  # GGUF {arch}.context_length / max_position_embeddings
    sliding_window: int | None = None  # informative: the estimate counts every layer as full attention
    vocab_size: int | None = None
    quantization: str | None = None  # GGUF file type ("MOSTLY_Q4_K_M") or safetensors dtype ("BF16")
    n_params: int | None = None
    weights_bytes: int = Field(ge=0, description="bytes of all tensors, from the tensor metadata")
    file_bytes: int = Field(ge=0, description="bytes of the model files on disk")
    kv_bytes_per_element: float = DEFAULT_KV_BYTES_PER_ELEMENT

    def kv_bytes_per_token(self, bytes_per_element: float | None = None) -> int | None:
        """Bytes of KV cache one token of context takes over all layers (keys and values), or None
        when the file does not say enough:

            sum over layers of kv_heads * (head_dim + value_head_dim) * bytes_per_element
            = 2 * n_layers * n_kv_heads * head_dim * bytes   (uniform layers, keys as wide as values)
        """
        per_element = self.kv_bytes_per_element if bytes_per_element is None else bytes_per_element
        key = self.head_dim
        value = self.value_head_dim or key
        if key is None or value is None:
            return None
        if self.kv_heads_per_layer:
            heads = sum(self.kv_heads_per_layer)
        elif self.n_layers is not None and self.n_kv_heads is not None:
            heads = self.n_layers * self.n_kv_heads
        else:
            return None
        return int(heads * (key + value) * per_element)
