"""Scenario registry: a name -> Scenario map filled by `@register_scenario` when the scenario modules import."""

from __future__ import annotations

from fmhub.errors import FmhubError
from fmhub.scenarios.base import Scenario

_REGISTRY: dict[str, type[Scenario]] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    _REGISTRY[cls.name] = cls
    return cls


def get_scenario(name: str) -> Scenario:
    _load_builtin()
    if name not in _REGISTRY:
        raise FmhubError(f"unknown scenario {name!r}; choose one of: {', '.join(list_scenarios())}")
    return _REGISTRY[name]()


def list_scenarios() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def _load_builtin() -> None:
    import importlib

    for module in ("customer_service", "medical_image", "voice_command"):
        try:
            importlib.import_module(f"fmhub.scenarios.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"fmhub.scenarios.{module}":
                raise


__all__ = ["Scenario", "register_scenario", "get_scenario", "list_scenarios"]
