"""Registration of the BERMo classes with transformers' Auto classes, without importing transformers early.

``import bermo`` must stay cheap for users who only want ``ScalarMix`` (transformers adds seconds), yet
``AutoConfig`` / ``AutoModel.from_pretrained(saved_bermo_dir)`` must work in a fresh process after
``import bermo`` alone. So the registration rides on transformers' own imports:

* the BERMo config registers itself (``AutoConfig``) once ``transformers.models.auto.configuration_auto`` has
  been imported, the models (``AutoModel``, ``AutoModelForSequenceClassification``) once
  ``transformers.models.auto.modeling_auto`` has: these modules hold the Auto classes, so nothing can look a
  BERMo model up before they exist;
* where they are already imported when bermo is, registration happens at once;
* otherwise a meta-path finder watches the imports of ``transformers`` modules and registers after the
  outermost one finishes. Not earlier: ``transformers.models.bert.modeling_bert`` imports the Auto modules
  halfway through its own import, and BERMo's models subclass it, so registering from inside that import would
  meet a partially initialised module. The finder leaves the modules themselves alone (it only wraps the
  ``exec_module`` of their loaders) and removes itself once everything is registered.

Registration itself is done by the modules that define the classes, at their end (``configuration_bermo``,
``modeling_bermo``), so importing them explicitly registers as well; they then call ``_register_ready`` in
case a trigger was imported while they were half done. A failure here never breaks the
import of transformers: it is reported once as a warning.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import warnings
from typing import Dict, Optional

# trigger module (transformers) -> bermo module whose import registers the classes it needs
_TARGETS: Dict[str, str] = {
    "transformers.models.auto.configuration_auto": "bermo.models.configuration_bermo",
    "transformers.models.auto.modeling_auto": "bermo.models.modeling_bermo",
}

_lock = threading.RLock()
_pending: Dict[str, str] = {}
_depth = 0          # transformers modules executing right now (under the finder's watch)
_registering = False
_finder: Optional["_TransformersImportWatcher"] = None


def _is_transformers(name: str) -> bool:
    return name == "transformers" or name.startswith("transformers.")


def _initializing(name: str, finishing: Optional[str] = None) -> bool:
    """Whether module ``name`` is being imported. ``finishing``: a module whose body has run to its end but whose
    import has not returned yet (importlib clears the flag after ``exec_module``): not counted."""
    if name == finishing:
        return False
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _register_ready(finishing: Optional[str] = None) -> None:
    """Import the bermo modules whose trigger has been imported, unless an import they could meet half done is
    under way: a transformers module's, or one of these bermo modules' own (its end calls this again). The
    caller names as ``finishing`` the module whose body has just run to its end (all it defines exists)."""
    global _registering
    while True:
        with _lock:  # held only to pick the work: an import under a lock of ours could deadlock with another thread
            if (_registering or _depth or not _pending or _initializing("transformers", finishing)
                    or any(_initializing(t, finishing) for t in _TARGETS.values())):
                return
            ready = [t for t in _pending if t in sys.modules and not _initializing(t, finishing)]
            if not ready:
                return
            targets = [_pending.pop(trigger) for trigger in ready]
            _registering = True
        try:
            for target in targets:
                if target in sys.modules:  # imported already: it registered itself
                    continue
                try:
                    importlib.import_module(target)
                except Exception as exc:  # never break the user's import of transformers
                    warnings.warn(f"bermo could not register its models with transformers' Auto classes "
                                  f"({type(exc).__name__}: {exc}); import {target} to see the whole error",
                                  RuntimeWarning, stacklevel=2)
        finally:
            with _lock:
                _registering = False
                if not _pending:
                    _uninstall_finder()
        # importing a target may have imported another trigger (with our own checks then returning early): look again


class _TransformersImportWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a ``transformers`` module, asks the other finders for its spec and wraps the
    loader's ``exec_module`` to count running imports and register once the outermost one is done."""

    def find_spec(self, fullname, path, target=None):
        if not _is_transformers(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None or getattr(exec_module, "_bermo_watch", False):
            return spec

        def watched_exec_module(module, _exec=exec_module):
            global _depth
            with _lock:
                _depth += 1
            try:
                _exec(module)
            finally:
                with _lock:
                    _depth -= 1
            _register_ready(finishing=module.__spec__.name)

        watched_exec_module._bermo_watch = True
        try:  # per-module loader instances (the usual file loaders): the class and isinstance stay as they are
            loader.exec_module = watched_exec_module
        except AttributeError:  # a loader that takes no attributes: leave this module unwatched
            pass
        return spec


def _uninstall_finder() -> None:
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None


def install() -> None:
    """Arrange for the BERMo classes to be registered with transformers' Auto classes when these are imported
    (at once, where they already are). Idempotent; called by ``import bermo``."""
    global _finder
    with _lock:
        for trigger, target in _TARGETS.items():
            if target not in sys.modules:
                _pending.setdefault(trigger, target)
        if not _pending:
            return
        if _finder is None:
            _finder = _TransformersImportWatcher()
            sys.meta_path.insert(0, _finder)
    _register_ready()
