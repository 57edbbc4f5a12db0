"""The llama.cpp flags berth accepts in engine_args: llama-server's spellings, each with the
xllamacpp CommonParams attribute it sets. One table for both ways berth runs llama.cpp: a
`llama-server` binary gets the flags as they are; the xllamacpp launcher (the default install)
parses its argv with this table and sets `target` on CommonParams ("!x": x is set to the opposite).

The bundled llama.cpp (xllamacpp 2026.10) has no --mlock / --no-mmap any more (its --load-mode
replaced them), so they are not here.
"""

from berth.engines.flags import Flag, FlagTable, Refused

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# choice -> (xllamacpp enum type, member) for the launcher
ENUMS: dict[str, tuple[str, dict[str, str]]] = {
    "flash_attn_type": ("llama_flash_attn_type", {
        "on": "LLAMA_FLASH_ATTN_TYPE_ENABLED", "off": "LLAMA_FLASH_ATTN_TYPE_DISABLED",
        "auto": "LLAMA_FLASH_ATTN_TYPE_AUTO",
    }),
    "cache_type_k": ("ggml_type", {t: f"GGML_TYPE_{t.upper()}" for t in CACHE_TYPES}),
    "cache_type_v": ("ggml_type", {t: f"GGML_TYPE_{t.upper()}" for t in CACHE_TYPES}),
    "rope_scaling_type": ("llama_rope_scaling_type", {
        "none": "LLAMA_ROPE_SCALING_TYPE_NONE", "linear": "LLAMA_ROPE_SCALING_TYPE_LINEAR",
        "yarn": "LLAMA_ROPE_SCALING_TYPE_YARN",
    }),
    "split_mode": ("llama_split_mode", {
        "none": "LLAMA_SPLIT_MODE_NONE", "layer": "LLAMA_SPLIT_MODE_LAYER", "row": "LLAMA_SPLIT_MODE_ROW",
    }),
    "reasoning_format": ("common_reasoning_format", {
        "none": "COMMON_REASONING_FORMAT_NONE", "auto": "COMMON_REASONING_FORMAT_AUTO",
        "deepseek": "COMMON_REASONING_FORMAT_DEEPSEEK", "deepseek-legacy": "COMMON_REASONING_FORMAT_DEEPSEEK_LEGACY",
    }),
}


def _choice(names: tuple[str, ...], target: str, help: str) -> Flag:
    return Flag(names, "choice", help, target, choices=tuple(ENUMS[target][1]))


FLAGS = (
    # offload and memory
    Flag(("--n-gpu-layers", "-ngl", "--gpu-layers"), "int", "layers to put on the GPU (-1: llama.cpp decides)",
         "n_gpu_layers", minimum=-1, maximum=10_000),
    Flag(("--main-gpu", "-mg"), "int", "the GPU for the model with --split-mode none", "main_gpu", minimum=0, maximum=255),
    _choice(("--split-mode", "-sm"), "split_mode", "how to split the model over GPUs"),
    Flag(("--tensor-split", "-ts"), "floats", "share of the model per GPU, e.g. 3,1", "tensor_split"),
    Flag(("--kv-offload", "-kvo"), "bool", "keep the KV cache on the GPU", "!no_kv_offload",
         negation=("--no-kv-offload", "-nkvo")),
    _choice(("--flash-attn", "-fa"), "flash_attn_type", "flash attention"),
    _choice(("--cache-type-k", "-ctk"), "cache_type_k", "KV cache type for K"),
    _choice(("--cache-type-v", "-ctv"), "cache_type_v", "KV cache type for V"),
    Flag(("--kv-unified", "-kvu"), "bool", "one KV buffer shared by all slots", "kv_unified",
         negation=("--no-kv-unified", "-no-kvu")),
    Flag(("--swa-full",), "bool", "full-size sliding-window cache", "swa_full"),
    Flag(("--cache-ram", "-cram"), "int", "MiB of host memory for the prompt cache (-1: no limit)",
         "cache_ram_mib", minimum=-1, maximum=10_000_000),
    # batching and slots
    Flag(("--parallel", "-np"), "int", "parallel slots (requests served at once)", "n_parallel", minimum=1, maximum=1024),
    Flag(("--batch-size", "-b"), "int", "logical batch size", "n_batch", minimum=1, maximum=1_048_576),
    Flag(("--ubatch-size", "-ub"), "int", "physical batch size", "n_ubatch", minimum=1, maximum=1_048_576),
    Flag(("--cont-batching", "-cb"), "bool", "continuous batching", "cont_batching",
         negation=("--no-cont-batching", "-nocb")),
    Flag(("--cache-reuse",), "int", "minimum chunk to reuse from the cache by KV shifting", "n_cache_reuse",
         minimum=0, maximum=1_048_576),
    Flag(("--context-shift",), "bool", "shift the context when it is full", "ctx_shift",
         negation=("--no-context-shift",)),
    Flag(("--keep",), "int", "prompt tokens to keep when the context shifts (-1: all)", "n_keep",
         minimum=-1, maximum=1_048_576),
    # threads
    Flag(("--threads", "-t"), "int", "CPU threads for generation (-1: llama.cpp decides)", "cpuparams.n_threads",
         minimum=-1, maximum=1024),
    Flag(("--threads-batch", "-tb"), "int", "CPU threads for prompt processing (default: --threads)",
         "cpuparams_batch.n_threads", minimum=-1, maximum=1024),
    Flag(("--threads-http",), "int", "HTTP threads (-1: llama.cpp decides)", "n_threads_http", minimum=-1, maximum=1024),
    # rope
    _choice(("--rope-scaling",), "rope_scaling_type", "RoPE frequency scaling method"),
    Flag(("--rope-freq-base",), "float", "RoPE base frequency (0: from the model)", "rope_freq_base", minimum=0),
    Flag(("--rope-freq-scale",), "float", "RoPE frequency scaling factor (0: from the model)", "rope_freq_scale",
         minimum=0),
    Flag(("--yarn-orig-ctx",), "int", "YaRN: the model's original context size (0: from the model)",
         "yarn_orig_ctx", minimum=0, maximum=1_048_576),
    Flag(("--yarn-ext-factor",), "float", "YaRN extrapolation mix factor (-1: from the model)", "yarn_ext_factor"),
    Flag(("--yarn-attn-factor",), "float", "YaRN attention magnitude scale (-1: from the model)", "yarn_attn_factor"),
    Flag(("--yarn-beta-slow",), "float", "YaRN high correction dim", "yarn_beta_slow"),
    Flag(("--yarn-beta-fast",), "float", "YaRN low correction dim", "yarn_beta_fast"),
    # generation defaults (a request's own fields win)
    Flag(("--n-predict", "-n", "--predict"), "int", "tokens to generate at most (-1: no limit)", "n_predict",
         minimum=-2, maximum=1_048_576),
    Flag(("--seed", "-s"), "int", "sampling seed (-1: random)", "sampling.seed", minimum=-1, maximum=4_294_967_295),
    Flag(("--temp", "--temperature"), "float", "sampling temperature", "sampling.temp", minimum=0, maximum=100),
    Flag(("--top-k",), "int", "top-k sampling (0: off)", "sampling.top_k", minimum=0, maximum=1_000_000),
    Flag(("--top-p",), "float", "top-p sampling (1: off)", "sampling.top_p", minimum=0, maximum=1),
    Flag(("--min-p",), "float", "min-p sampling (0: off)", "sampling.min_p", minimum=0, maximum=1),
    Flag(("--repeat-penalty",), "float", "repetition penalty (1: off)", "sampling.penalty_repeat", minimum=0),
    Flag(("--repeat-last-n",), "int", "tokens the repetition penalty looks back (-1: context)",
         "sampling.penalty_last_n", minimum=-1, maximum=1_048_576),
    Flag(("--presence-penalty",), "float", "presence penalty (0: off)", "sampling.penalty_present"),
    Flag(("--frequency-penalty",), "float", "frequency penalty (0: off)", "sampling.penalty_freq"),
    # server behaviour
    Flag(("--jinja",), "bool", "use the model's Jinja chat template", "use_jinja", negation=("--no-jinja",)),
    _choice(("--reasoning-format",), "reasoning_format", "where reasoning text goes in answers"),
    Flag(("--metrics",), "bool", "serve Prometheus metrics at /metrics", "endpoint_metrics"),
    Flag(("--slots",), "bool", "serve the slots monitor at /slots", "endpoint_slots", negation=("--no-slots",)),
    Flag(("--warmup",), "bool", "run an empty warm-up generation at start", "warmup", negation=("--no-warmup",)),
)

_OWNED = "berth sets it for every deployment"
_OUTSIDE = "it reads, writes or runs something outside the model"

REFUSED = (
    Refused(("--model", "-m"), "owned", "berth sets it: the model is the spec's `model`"),
    Refused(("--ctx-size", "-c"), "owned", "berth sets it: use the spec's `context_size`"),
    Refused(("--host",), "owned", "berth sets it: the engine listens on 127.0.0.1, behind the gateway"),
    Refused(("--port",), "owned", "berth sets it: berth allocates the engine's port"),
    Refused(("--alias", "-a"), "owned", "berth sets it: the model's name is the deployment's name"),
    Refused(("--api-key", "--api-key-file"), "owned", "berth owns authentication (the gateway)"),
    Refused(("--path", "--api-prefix", "--reuse-port", "--ssl-key-file", "--ssl-cert-file", "--log-file",
             "--models-dir", "--models-preset", "--models-max", "--props"), "owned", _OWNED),
    Refused(("--model-url", "-mu", "--hf-repo", "-hf", "-hfr", "--hf-file", "-hff", "--hf-token", "-hft",
             "--docker-repo", "-dr"), "owned", "berth fetches the model: name it in the spec's `model`"),
    Refused(("--lora", "--lora-scaled", "--control-vector", "--control-vector-scaled", "--mmproj", "-mm",
             "--mmproj-url", "-mmu", "--model-draft", "-md", "--chat-template-file", "--grammar-file",
             "--json-schema-file", "-jf", "--slot-save-path", "--prompt-cache", "--file", "-f",
             "--system-prompt-file", "-sysf", "--media-path", "--context-file", "--lookup-cache-static", "-lcs",
             "--lookup-cache-dynamic", "-lcd", "--ui-config-file", "--webui-config-file", "--rpc"),
            "outside", _OUTSIDE),
    Refused(("--tools", "--tools-runtime", "--mcp-servers-config", "--mcp-servers-json"), "outside",
            "it lets chat clients run tools (files, commands) on the node"),
)

TABLE = FlagTable("llamacpp", FLAGS, REFUSED)
