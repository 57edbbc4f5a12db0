"""Which environment variables a deployment's `env` may set on the node: the one list, and why.

An engine runs with the node's rights (and, under docker-compose, the worker's: root with the
Docker socket). A variable that changes how a process loads code or finds programs turns `env` into
"run this file as the node": `LD_PRELOAD` pointing at a deployed "model" file is enough. Those names
are refused unless the node's operator allows them (BERTH_ALLOW_UNSAFE_ENV=1 on the node, and on
the API that checks specs for it). Everything else (HF_TOKEN, CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS,
VLLM_ATTENTION_BACKEND, MALLOC_ARENA_MAX, ...) passes.

Left allowed on purpose: CUDA_* (device choice; CUDA_HOME/CUDA_PATH below are the exception),
MALLOC_* tuning (MALLOC_TRACE writes a file: refused), OMP_*/MKL_* threads, proxies (they cannot
break TLS without a trust-store change, which is refused), HF_TOKEN and the HF_HUB_* switches.

Pure: no I/O; the caller says whether the operator allows unsafe names (`operator_allows`).
"""

from collections.abc import Mapping

ALLOW_UNSAFE_ENV = "BERTH_ALLOW_UNSAFE_ENV"
ALLOW_UNSAFE_ENGINE_ARGS = "BERTH_ALLOW_UNSAFE_ENGINE_ARGS"

_LOADER = "the dynamic loader reads it: it loads any shared library into the engine"
_SHELL = "a shell reads it: it runs commands or files at start"
_CACHE_CODE = "a cache of compiled code or downloaded modules that the engine loads and runs"
_COMPILER = "the compiler or linker that the engine's JIT (Triton, torch.compile) runs"
_FILES = "where the engine reads models and configuration: it could read any folder of the node"
_TRUST = "which certificates the engine trusts: the node's operator sets it"

# Name prefixes, upper case: every name that starts with one is refused.
UNSAFE_PREFIXES: dict[str, str] = {
    "LD_": _LOADER,  # LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, LD_DEBUG_OUTPUT (writes a file)
    "DYLD_": "macOS's dynamic loader reads it: it loads any library into the engine",
    "PYTHON": "Python reads it at start: PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONUSERBASE, "
    "PYTHONWARNINGS and PYTHONBREAKPOINT import modules from anywhere",
    "TRITON_": "Triton's cache and tool paths (TRITON_CACHE_DIR, TRITON_PTXAS_PATH): it loads and runs them",
    "TORCHINDUCTOR_": "torch.compile's cache and compiler settings: it loads the compiled code",
    "OPENSSL_": "OpenSSL's configuration (OPENSSL_CONF, OPENSSL_MODULES) loads engines and providers",
    "BERTH_": "berth's own settings and the markers it finds its engines by",
}

# Python variables that only change output or hashing: allowed although they start with PYTHON.
SAFE_PYTHON_NAMES = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8",
     "PYTHONFAULTHANDLER"}
)

# Exact names, upper case.
UNSAFE_NAMES: dict[str, str] = {
    "PATH": "where programs are found: the engine and its tools would run programs from anywhere",
    "HOME": "the home folder: Python adds ~/.local's packages to its path, and caches live there",
    "TMPDIR": "compilers write and load their output there",
    "TMP": "compilers write and load their output there",
    "TEMP": "compilers write and load their output there",
    "BASH_ENV": _SHELL,
    "ENV": _SHELL,
    "SHELLOPTS": _SHELL,
    "BASHOPTS": _SHELL,
    "PS4": _SHELL,
    "IFS": "changes how a shell splits words, so what commands it runs",
    "GCONV_PATH": "glibc loads character-set modules (shared libraries) from it",
    "LOCPATH": "glibc reads locale files from it",
    "NLSPATH": "glibc reads message catalogues from it",
    "GLIBC_TUNABLES": "changes the C library's internals (CVE-2023-4911)",
    "MALLOC_TRACE": "glibc writes a trace file wherever it says",
    "NODE_OPTIONS": "Node.js reads it: --require loads any module",
    "NODE_PATH": "Node.js loads modules from it",
    "PERL5LIB": "Perl loads modules from it",
    "PERL5OPT": "Perl reads options from it: -M loads any module",
    "PERLLIB": "Perl loads modules from it",
    "RUBYOPT": "Ruby reads options from it: -r loads any file",
    "RUBYLIB": "Ruby loads files from it",
    "CC": _COMPILER,
    "CXX": _COMPILER,
    "CFLAGS": _COMPILER,
    "CXXFLAGS": _COMPILER,
    "LDFLAGS": _COMPILER,
    "CPATH": _COMPILER,
    "LIBRARY_PATH": _COMPILER,
    "C_INCLUDE_PATH": _COMPILER,
    "CPLUS_INCLUDE_PATH": _COMPILER,
    "NVCC_PREPEND_FLAGS": _COMPILER,
    "NVCC_APPEND_FLAGS": _COMPILER,
    "CUDA_HOME": "where nvcc and CUDA's libraries are found: PyTorch runs and loads them",
    "CUDA_PATH": "where nvcc and CUDA's libraries are found: PyTorch runs and loads them",
    "XDG_CACHE_HOME": _CACHE_CODE,
    "XDG_CONFIG_HOME": "where programs read their configuration",
    "XDG_DATA_HOME": "where programs read their data",
    "TORCH_HOME": _CACHE_CODE,
    "TORCH_EXTENSIONS_DIR": _CACHE_CODE,
    "NUMBA_CACHE_DIR": _CACHE_CODE,
    "HF_MODULES_CACHE": _CACHE_CODE,
    "VLLM_CACHE_ROOT": _CACHE_CODE,
    "VLLM_PLUGINS": "vLLM imports the plugins it names",
    "VLLM_ALLOW_INSECURE_SERIALIZATION": "vLLM then unpickles messages: pickle runs code",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "vLLM then loads LoRA adapters from any path a client names",
    "VLLM_CONFIG_ROOT": _FILES,
    "VLLM_API_KEY": "berth owns the engine's authentication (the gateway)",
    "HF_HOME": _FILES,
    "HF_HUB_CACHE": _FILES,
    "HUGGINGFACE_HUB_CACHE": _FILES,
    "TRANSFORMERS_CACHE": _FILES,
    "HF_DATASETS_CACHE": _FILES,
    "HF_ASSETS_CACHE": _FILES,
    "HF_TOKEN_PATH": "the engine would read that file as its token",
    "SSL_CERT_FILE": _TRUST,
    "SSL_CERT_DIR": _TRUST,
    "REQUESTS_CA_BUNDLE": _TRUST,
    "CURL_CA_BUNDLE": _TRUST,
}


class UnsafeEnv(ValueError):
    """A deployment's `env` that the node refuses; the message names the variable and the way out."""


def operator_allows(environ: Mapping[str, str], switch: str) -> bool:
    """Whether the node's operator turned `switch` on (1, true, yes)."""
    return environ.get(switch, "").strip().lower() in ("1", "true", "yes")


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot be an environment variable's name at all (None: it can)."""
    if not name:
        return "an environment variable needs a name"
    if "=" in name or "\0" in name:
        return f"invalid environment variable name {name!r}: '=' and NUL cannot be in a name"
    if not (name[0].isascii() and (name[0].isalpha() or name[0] == "_")) or not all(
        c.isascii() and (c.isalnum() or c == "_") for c in name
    ):
        return f"invalid environment variable name {name!r}: use letters, digits and '_', not starting with a digit"
    return None


def unsafe_env_reason(name: str) -> str | None:
    """Why setting `name` could run code or read files on the node (None: it cannot, as far as berth knows)."""
    upper = name.upper()
    if upper in SAFE_PYTHON_NAMES:
        return None
    if upper in UNSAFE_NAMES:
        return UNSAFE_NAMES[upper]
    for prefix, reason in UNSAFE_PREFIXES.items():
        if upper.startswith(prefix):
            return reason
    return None


def env_problems(env: Mapping[str, str], allow_unsafe: bool = False) -> list[str]:
    """Every reason to refuse this `env`, one message per variable ([] when it may be used)."""
    problems = []
    for name, value in env.items():
        shape = env_name_problem(name)
        if shape:
            problems.append(shape)
            continue
        if "\0" in value:
            problems.append(f"env {name}: the value contains a NUL character, which no environment can hold")
            continue
        reason = unsafe_env_reason(name)
        if reason and not allow_unsafe:
            problems.append(
                f"env {name} is refused: {reason}; set it on the node itself, or have the node's "
                f"operator allow such variables with {ALLOW_UNSAFE_ENV}=1 (on the API and the node)"
            )
    return problems


def check_env(env: Mapping[str, str], allow_unsafe: bool = False) -> None:
    """Raise UnsafeEnv naming every refused variable; return when `env` may be used."""
    problems = env_problems(env, allow_unsafe)
    if problems:
        raise UnsafeEnv("; ".join(problems))
