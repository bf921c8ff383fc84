"""Reading structured config values: mappings key by key, Kubernetes quantities."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pulumi

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_SCALE = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}


class ConfigError(pulumi.RunError):
    """The stack's configuration does not describe a deployable service."""


def quantity(text: str) -> float:
    """A Kubernetes quantity ("250m", "1", "512Mi") as a number (cores or bytes)."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a Kubernetes quantity such as 250m, 1, 512Mi")
    return float(match.group(1)) * _SCALE[match.group(2) or ""]


class Section:
    """One structured config value (a YAML mapping), read key by key; unknown keys are errors."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {raw!r}")
        self._raw: Mapping[str, Any] = raw
        self._where = where
        self._read: set[str] = set()

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self._raw.get(key)

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self._where}.{key} is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where}.{key} must be a non-empty string, got {value!r}")
        return value

    @property
    def where(self) -> str:
        return self._where

    def optional_text(self, key: str) -> str | None:
        if self._raw.get(key) is None:
            self._read.add(key)
            return None
        return self.text(key)

    def quantity(self, key: str) -> str:
        """A Kubernetes quantity: "250m", "512Mi", or a bare number (cpu: 1)."""
        value = self._get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if value is None:
            raise ConfigError(f"{self._where}.{key} is required")
        if not isinstance(value, str):
            raise ConfigError(f"{self._where}.{key} must be a quantity, got {value!r}")
        quantity(value)
        return value

    def integer(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"{self._where}.{key} is required")
            value = default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._where}.{key} must be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{self._where}.{key} must be at least {minimum}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where}.{key} must be true or false, got {value!r}")
        return value

    def section(self, key: str) -> Section:
        return Section(self._get(key), f"{self._where}.{key}")

    def optional_section(self, key: str) -> Section | None:
        if self._raw.get(key) is None:
            self._read.add(key)
            return None
        return self.section(key)

    def done(self) -> None:
        unknown = sorted(set(self._raw) - self._read)
        if unknown:
            raise ConfigError(f"{self._where} has unknown keys: {', '.join(unknown)}")
