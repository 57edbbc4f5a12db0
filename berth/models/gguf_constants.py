"""The `gguf` package's constants module, loaded on its own.

`import gguf` runs the package's __init__, which imports its reader and writer and with them numpy:
~22 MB in every worker and ~0.2 s of start-up, for a header parser (model_facts) that needs only
the constants (value types, quantisation block sizes, file types). gguf/constants.py imports only
the standard library, so it is loaded here by itself, under its own name: a later `import gguf`
(tests write GGUFs with gguf.GGUFWriter) finds it in sys.modules and uses the same classes. If the
package's layout ever changes, the whole package is imported as before.
"""

import importlib
import importlib.util
import sys
from types import ModuleType

NAME = "gguf.constants"


def load() -> ModuleType:
    if NAME in sys.modules:
        return sys.modules[NAME]
    try:
        package = importlib.util.find_spec("gguf")
        locations = list(package.submodule_search_locations or []) if package else []
        spec = importlib.util.spec_from_file_location(NAME, f"{locations[0]}/constants.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
        return module
    except Exception:  # noqa: BLE001 - any surprise: the normal import
        sys.modules.pop(NAME, None)
        return importlib.import_module(NAME)


constants = load()
