"""The scenario registry: name -> Scenario class, read by the CLI, the config help, the app and the Space writer.

A built-in scenario is one module in `fmhub/scenarios/` plus one line in `BUILTIN`; anyone else calls
`register(cls)` (for instance from their own package's import). Scenario modules import nothing heavy at module level,
so listing the names does not import torch and `fmhub --help` stays fast.
"""

from __future__ import annotations

import importlib

from fmhub.errors import FmhubError
from fmhub.scenarios.base import Scenario

BUILTIN = (
    "fmhub.scenarios.customer_service:CustomerService",
    "fmhub.scenarios.medical_image:MedicalImage",
    "fmhub.scenarios.voice_command:VoiceCommand",
)
_REGISTRY: dict[str, type[Scenario]] = {}
_builtin_loaded = False


def register(cls: type[Scenario]) -> type[Scenario]:
    """Add a Scenario class (also usable as a class decorator); a later class with the same name replaces it."""
    if not (isinstance(cls, type) and issubclass(cls, Scenario)) or not getattr(cls, "name", None):
        raise TypeError(f"{cls!r} is not a Scenario subclass with a name")
    _load_builtin()
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def scenario_class(name: str) -> type[Scenario]:
    _load_builtin()
    if name not in _REGISTRY:
        raise FmhubError(f"unknown scenario {name!r}; choose one of: {', '.join(list_scenarios())}")
    return _REGISTRY[name]


def get_scenario(name: str) -> Scenario:
    return scenario_class(name)()


def list_scenarios() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def _load_builtin() -> None:
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True
    for entry in BUILTIN:  # `register` loads these first, so the built-ins always come first
        module, _, attr = entry.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        _REGISTRY[cls.name] = cls


__all__ = ["Scenario", "BUILTIN", "register", "unregister", "scenario_class", "get_scenario", "list_scenarios"]
