"""Lazy package exports (PEP 562): a package lists ``{name: submodule}`` and imports a submodule on the first use
of one of its names, so that importing the package stays cheap (``bermo.models`` without the Trainer,
``bermo.pruning`` without accelerate)."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str], namespace: Dict[str, Any]) -> \
        Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` (its ``__name__``) whose public ``exports`` map each name to
    the submodule defining it; a resolved name is cached in the package's ``namespace`` (its ``globals()``)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
