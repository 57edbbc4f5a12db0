"""The mlx_lm.server flags berth accepts in engine_args (`target`: mlx_lm.server's argument)."""

from berth.engines.flags import Flag, FlagTable, Refused

FLAGS = (
    Flag(("--temp",), "float", "default sampling temperature", "temp", minimum=0, maximum=100),
    Flag(("--top-p",), "float", "default top-p", "top_p", minimum=0, maximum=1),
    Flag(("--top-k",), "int", "default top-k (0: off)", "top_k", minimum=0, maximum=1_000_000),
    Flag(("--min-p",), "float", "default min-p (0: off)", "min_p", minimum=0, maximum=1),
    Flag(("--max-tokens",), "int", "default tokens to generate at most", "max_tokens", minimum=1, maximum=1_048_576),
    Flag(("--log-level",), "choice", "log level", "log_level",
         choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Flag(("--use-default-chat-template",), "bool", "use the tokenizer's default chat template",
         "use_default_chat_template"),
    Flag(("--trust-remote-code",), "bool", "it runs the Python code that comes with the model's tokenizer",
         "trust_remote_code", risk="unsafe"),
)

REFUSED = (
    Refused(("--model",), "owned", "berth sets it: the model is the spec's `model`"),
    Refused(("--host",), "owned", "berth sets it: the engine listens on 127.0.0.1, behind the gateway"),
    Refused(("--port",), "owned", "berth sets it: berth allocates the engine's port"),
    Refused(("--adapter-path", "--draft-model"), "outside", "it loads weights from outside the model"),
)

TABLE = FlagTable("mlx", FLAGS, REFUSED)
