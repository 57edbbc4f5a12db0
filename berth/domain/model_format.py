"""A model's file format, from its name alone (no I/O)."""

from pathlib import PurePath

SERVED_FORMATS = ("gguf", "safetensors")
KNOWN_UNSERVED = {
    ".bin": "PyTorch .bin weights",
    ".pt": "PyTorch checkpoint",
    ".pth": "PyTorch checkpoint",
    ".onnx": "ONNX",
    ".h5": "Keras/TensorFlow",
    ".ckpt": "checkpoint",
    ".tflite": "TensorFlow Lite",
}


def format_of_name(reference: str) -> str | None:
    """'gguf', 'safetensors', 'unsupported:<what>', or None when the name does not say."""
    suffix = PurePath(reference.split("?", 1)[0]).suffix.lower()
    if suffix == ".gguf":
        return "gguf"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in KNOWN_UNSERVED:
        return f"unsupported:{KNOWN_UNSERVED[suffix]}"
    return None
