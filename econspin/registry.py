"""Registries: the names a scenario writes, mapped to the classes that implement them."""

from __future__ import annotations

from typing import Callable


def class_registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """A decorator factory: ``@register("name")`` stores the class in ``table`` under ``name``."""

    def register(name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            cls.name = name
            table[name] = cls
            return cls

        return decorate

    return register
