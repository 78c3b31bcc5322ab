"""npuc.passes: the registered graph passes, one module per pass.

    npuc.passes.names()                        # what is registered
    npuc.passes.apply(g, "cse")                # one pass; never mutates g
    npuc.passes.run_pipeline(g, ["fold_constants", "cse", "dce"])

Importing this package imports every module in it, and each pass module registers its pass with
`@register_pass`, so a new pass is a new file and nothing else.
"""

import importlib
import pkgutil

from npuc.pipeline import (
    PassContext,
    PassError,
    PassRecord,
    apply,
    get,
    names,
    parse_pipeline,
    register_pass,
    run_pipeline,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# The canonical clean-up every target pipeline starts and ends with.
CANONICAL = ["fold_constants", "remove_noops", "cse", "dce"]

__all__ = ["CANONICAL", "PassContext", "PassError", "PassRecord", "apply", "get", "names",
           "parse_pipeline", "register_pass", "run_pipeline"]
