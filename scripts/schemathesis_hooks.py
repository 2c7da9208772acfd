"""Loaded by scripts/api-contract (SCHEMATHESIS_HOOKS) into schemathesis.

CPython 3.11 can raise `SystemError: AST constructor recursion depth mismatch` when hypothesis
parses a large module to describe a lambda for a strategy's repr. The description is cosmetic,
so it falls back to the function's name instead of ending the run with a runtime error.
"""

import hypothesis.strategies._internal.lazy as _lazy

_describe = _lazy.get_pretty_function_description


def _describe_safely(fn):
    try:
        return _describe(fn)
    except SystemError:
        return getattr(fn, "__name__", "lambda")


_lazy.get_pretty_function_description = _describe_safely
