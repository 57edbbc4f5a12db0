"""Failure lines any engine may print: the operating system, the C++ runtime, CUDA and its
driver, PyTorch, the Hugging Face loaders, Python itself. Most of the specificity ladder lives
here; the engine tables (llamacpp.py, vllm.py, mlx.py) add what only that engine says.

Also here: the log prefixes that say nothing to a reader (stripped from a Failure's evidence).
"""

import re

from berth.domain.log_patterns.base import CUDA, LOAD, OOM, RUNTIME, LogPattern, pattern as _p

PATTERNS: tuple[LogPattern, ...] = (
    # --- OOM: the GPU / host memory was too small ------------------------------------------
    _p(OOM, r"\b(?:CUDA|HIP|XPU|MPS) out of memory", 90, "GPU out of memory (PyTorch)"),
    _p(OOM, r"\bOutOfMemoryError\b", 90, "out-of-memory exception (torch.OutOfMemoryError)"),
    _p(
        OOM,
        r"\b(?:cuda|hip)Malloc\w*(?:\(\))? failed:?\s*out of memory|\bCUDA error:?\s*out of memory"
        r"|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED",
        90,
        "CUDA allocation failed: out of memory",
    ),
    _p(OOM, r"Cannot allocate memory", 85, "the operating system refused memory (ENOMEM)"),
    _p(
        OOM,
        # A bare "out of memory" also proves it, except in vLLM's advice printed on every start
        # ("If you are running out of memory, consider decreasing `gpu_memory_utilization` ...")
        # and in llama.cpp's pinned-memory warning (it carries on with ordinary memory).
        r"^(?!.*\bif you are running out of memory\b)(?!.*pinned memory).*\bout of memory\b",
        85,
        "out of memory",
    ),
    _p(OOM, r"std::bad_alloc", 80, "a C++ allocation failed (std::bad_alloc)"),
    # --- CUDA_ERROR: driver, runtime or device faults -------------------------------------
    _p(
        CUDA,
        # llama.cpp prints the same words at ggml_cuda_init and then carries on, on the CPU;
        # that line is matched (less specifically) in llamacpp.py.
        r"^(?!.*ggml_cuda_init).*(?:no CUDA-capable device is detected"
        r"|CUDA driver version is insufficient for CUDA runtime version)",
        70,
        "no usable CUDA device or driver",
    ),
    _p(
        CUDA,
        r"Failed to initialize NVML|\bNVML\b.*\b(?:error|mismatch|failed|unknown)\b|\bnvml error\b",
        70,
        "NVML (the NVIDIA management library) failed",
    ),
    _p(CUDA, r"an illegal memory access was encountered", 70, "CUDA: illegal memory access"),
    _p(
        CUDA,
        r"no kernel image is available for execution on the device",
        70,
        "CUDA: the build has no kernels for this GPU",
    ),
    _p(
        CUDA,
        r"NVIDIA driver on your system is too old|Found no NVIDIA driver on your system"
        r"|No CUDA GPUs are available|Failed to infer device type",
        70,
        "no usable NVIDIA driver or GPU",
    ),
    _p(
        CUDA,
        r"lib(?:cuda|nvidia-ml|cudart|cublas\w*|cudnn\w*)\.so[.\d]*: cannot open shared object file",
        70,
        "a CUDA/NVIDIA library is missing",
    ),
    _p(
        CUDA,
        r"unspecified launch failure|device-side assert triggered|CUBLAS_STATUS_\w+|\bNCCL error\b"
        r"|cudaError\w+",
        70,
        "CUDA runtime fault",
    ),
    _p(CUDA, r"\bCUDA error\b", 65, "CUDA error"),
    _p(CUDA, r"CUDA_LAUNCH_BLOCKING", 60, "CUDA error (asynchronously reported)"),
    # --- MODEL_LOADING_FAILURE: missing, corrupt or unreadable model files ----------------
    _p(
        LOAD,
        r"Error while deserializing header|HeaderTooLarge|InvalidHeaderDeserialization"
        r"|MetadataIncompleteBuffer|SafetensorError|\[load_safetensors\]",
        55,
        "a safetensors file is damaged (unreadable header)",
    ),
    _p(
        LOAD,
        r"does not appear to have a file named|Can't load tokenizer|Can't load the configuration"
        r"|Unrecognized model in|Invalid repository ID or local directory"
        r"|Could not detect config format|No supported config format found|No safetensors found"
        r"|RepositoryNotFoundError|Repository Not Found",
        55,
        "model files are missing (config, tokenizer or weights)",
    ),
    _p(
        LOAD,
        r"error loading model|failed to load model|unable to load model|model loading error",
        50,
        "the engine failed to load the model",
    ),
    _p(
        LOAD,
        r"No such file or directory|FileNotFoundError|\bfile not found\b|\bfailed to open\b",
        40,
        "a file was not found",
    ),
    # --- RUNTIME_ERROR: something crashed, nothing more specific said why -----------------
    _p(RUNTIME, r"\bRuntimeError\b", 15, "runtime error"),
    _p(
        RUNTIME,
        r"\b(?:[A-Z]\w*)?(?:Error|Exception)(?::\s|:$|\s*$)",
        15,
        "exception",
        flags=0,  # case matters: "ValueError:" yes, a log level "ERROR" no
    ),
    _p(
        RUNTIME,
        r"terminate called after throwing|libc\+\+abi: terminating|^\s*what\(\):|Fatal Python error"
        r"|\berror:\s",
        15,
        "the engine crashed with an error",
    ),
    # Says that it died, not why: less than any line that says why.
    _p(RUNTIME, r"Segmentation fault|core dumped|\bAborted\b", 12, "the engine crashed"),
    _p(RUNTIME, r"Traceback \(most recent call last\)", 10, "Python traceback"),
)

# Line prefixes that say nothing to a reader, stripped (repeatedly) from a Failure's evidence.
LOG_PREFIXES = (
    re.compile(r"^\s*\([\w.-]+(?: [\w.-]+=\d+)*\)\s*"),  # vLLM: "(EngineCore_DP0 pid=42) "
    re.compile(r"^\s*\[rank\d+\]:\s*"),  # torch.distributed: "[rank0]: "
    re.compile(r"^\s*[\w.-]+\s+\|\s"),  # docker compose: "vllm-1  | "
    re.compile(r"^\s*\d{4}-\d\d-\d\d[T ][\d:.,]+Z?\s+(?:-\s+)?"),  # ISO timestamps
    re.compile(  # vLLM: "ERROR 04-30 10:20:36 [core.py:396] " (older: "engine.py:366] ")
        r"^\s*(?:INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[\w./-]+:\d+\]\s*"
    ),
    re.compile(r"^\s*\d+\.\d\d\.\d{3}\.\d{3} [DIWE] "),  # llama.cpp timestamps: "1.06.520.077 E "
)
