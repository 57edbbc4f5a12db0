"""The vLLM flags berth accepts in engine_args (vLLM's OpenAI server spellings; `target` is vLLM's
engine argument). vLLM also takes `--max_model_len`-style spellings: berth does not (fail closed).
"""

from berth.engines.flags import Flag, FlagTable, Refused

FLAGS = (
    Flag(("--dtype",), "choice", "weights and activations type", "dtype",
         choices=("auto", "half", "float16", "bfloat16", "float", "float32")),
    Flag(("--kv-cache-dtype",), "choice", "KV cache type", "kv_cache_dtype",
         choices=("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")),
    Flag(("--quantization", "-q"), "name", "quantization method (awq, gptq, fp8, ...)", "quantization"),
    Flag(("--load-format",), "choice", "weights format to load", "load_format", choices=("auto", "safetensors")),
    Flag(("--gpu-memory-utilization",), "float", "share of GPU memory vLLM may use (berth: 0.9)",
         "gpu_memory_utilization", minimum=0.01, maximum=1),
    Flag(("--max-num-seqs",), "int", "sequences per iteration", "max_num_seqs", minimum=1, maximum=65_536),
    Flag(("--max-num-batched-tokens",), "int", "tokens per iteration", "max_num_batched_tokens",
         minimum=1, maximum=16_777_216),
    Flag(("--tensor-parallel-size", "-tp"), "int", "GPUs to split each layer over", "tensor_parallel_size",
         minimum=1, maximum=1024),
    Flag(("--pipeline-parallel-size", "-pp"), "int", "pipeline stages", "pipeline_parallel_size",
         minimum=1, maximum=1024),
    Flag(("--data-parallel-size", "-dp"), "int", "data-parallel replicas", "data_parallel_size",
         minimum=1, maximum=1024),
    Flag(("--enable-expert-parallel",), "bool", "expert parallelism for MoE layers", "enable_expert_parallel",
         negation=("--no-enable-expert-parallel",)),
    Flag(("--enforce-eager",), "bool", "no CUDA graphs", "enforce_eager", negation=("--no-enforce-eager",)),
    Flag(("--enable-prefix-caching",), "bool", "prefix caching", "enable_prefix_caching",
         negation=("--no-enable-prefix-caching",)),
    Flag(("--enable-chunked-prefill",), "bool", "chunked prefill", "enable_chunked_prefill",
         negation=("--no-enable-chunked-prefill",)),
    Flag(("--swap-space",), "float", "CPU swap space per GPU, GiB", "swap_space", minimum=0, maximum=100_000),
    Flag(("--cpu-offload-gb",), "float", "GiB of weights to keep in CPU memory", "cpu_offload_gb",
         minimum=0, maximum=100_000),
    Flag(("--block-size",), "int", "KV cache block size in tokens", "block_size", minimum=1, maximum=1024),
    Flag(("--seed",), "int", "random seed", "seed", minimum=0, maximum=4_294_967_295),
    Flag(("--max-logprobs",), "int", "logprobs a request may ask for", "max_logprobs", minimum=0, maximum=1_000_000),
    Flag(("--generation-config",), "choice", "where default sampling settings come from", "generation_config",
         choices=("auto", "vllm")),
    Flag(("--enable-auto-tool-choice",), "bool", "let the model choose tools", "enable_auto_tool_choice"),
    Flag(("--tool-call-parser",), "name", "the built-in tool-call parser (hermes, llama3_json, ...)",
         "tool_call_parser"),
    Flag(("--reasoning-parser",), "name", "the built-in reasoning parser", "reasoning_parser"),
    Flag(("--disable-log-stats",), "bool", "no periodic stats in the log", "disable_log_stats"),
    Flag(("--uvicorn-log-level",), "choice", "the HTTP server's log level", "uvicorn_log_level",
         choices=("critical", "error", "warning", "info", "debug", "trace")),
    Flag(("--trust-remote-code",), "bool", "it runs the Python code that comes with the model", "trust_remote_code",
         risk="unsafe"),
)

_OUTSIDE = "it reads, loads or runs something outside the model"

REFUSED = (
    Refused(("--model",), "owned", "berth sets it: the model is the spec's `model`"),
    Refused(("--max-model-len",), "owned", "berth sets it: use the spec's `context_size`"),
    Refused(("--host",), "owned", "berth sets it: the engine listens on 127.0.0.1, behind the gateway"),
    Refused(("--port",), "owned", "berth sets it: berth allocates the engine's port"),
    Refused(("--served-model-name",), "owned", "berth sets it: the model's name is the deployment's name"),
    Refused(("--api-key",), "owned", "berth owns authentication (the gateway)"),
    Refused(("--uds", "--root-path", "--ssl-keyfile", "--ssl-certfile", "--ssl-ca-certs", "--ssl-cert-reqs",
             "--download-dir"), "owned", "berth sets it for every deployment"),
    Refused(("--tokenizer", "--chat-template", "--lora-modules", "--enable-lora", "--tool-parser-plugin",
             "--middleware", "--hf-config-path", "--config", "--allowed-local-media-path",
             "--speculative-config", "--worker-cls", "--worker-extension-cls", "--logits-processors",
             "--model-loader-extra-config", "--hf-overrides"), "outside", _OUTSIDE),
)

TABLE = FlagTable("vllm", FLAGS, REFUSED)
