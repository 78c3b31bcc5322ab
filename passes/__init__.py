"""npuc.passes: the registered graph passes, one module per pass.

    npuc.passes.names()                        # what is registered
    npuc.passes.apply(g, "cse")                # one pass; never mutates g
    npuc.passes.run_pipeline(g, ["fold_constants", "cse", "dce"])

Importing this package registers every pass below.
"""

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

from . import cse, dce, fold_batchnorm, fold_constants, remove_noops  # noqa: F401 (registration)

# The canonical clean-up every target pipeline starts and ends with.
CANONICAL = ["fold_constants", "remove_noops", "cse", "dce"]

__all__ = ["CANONICAL", "PassContext", "PassError", "PassRecord", "apply", "get", "names",
           "parse_pipeline", "register_pass", "run_pipeline"]
