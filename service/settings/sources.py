"""Where settings come from besides defaults and the environment: a TOML file, a secrets dir."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

CONFIG_FILE_VAR = "GRAPHGATE_CONFIG"
SECRETS_DIR_VAR = "GRAPHGATE_SECRETS_DIR"


class ConfigError(Exception):
    """A setting is invalid; the message is one line naming it and the reason."""


class TomlFileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as fh:
                return tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(
                f"{CONFIG_FILE_VAR}: config file {self.path} does not exist"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{CONFIG_FILE_VAR}: {self.path} is not valid TOML ({exc})") from None


class SecretsDirSource(PydanticBaseSettingsSource):
    """One file per setting; `section__key` files fill nested sections.

    pydantic-settings' own secrets source only fills top-level fields, and we want
    `postgres__…`-style names to work like the env vars they mirror.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        super().__init__(settings_cls)
        self.directory = directory

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        if not self.directory.is_dir():
            raise ConfigError(f"{SECRETS_DIR_VAR}: {self.directory} is not a directory")
        fields = self.settings_cls.model_fields
        values: dict[str, Any] = {}
        for entry in sorted(self.directory.iterdir()):
            # Kubernetes secret volumes hold `..data` links and dot-files; other
            # credentials may share the directory, so unknown names are skipped.
            if entry.name.startswith(".") or not entry.is_file():
                continue
            path = entry.name.lower().split("__")
            if path[0] not in fields:
                continue
            target = values
            for depth, part in enumerate(path[:-1], start=1):
                target = target.setdefault(part, {})
                if not isinstance(target, dict):
                    section = "GRAPHGATE_" + "__".join(path[:depth]).upper()
                    raise ConfigError(f"{SECRETS_DIR_VAR}: file {entry.name} sets a key inside "
                                      f"{section}, which another file sets as a whole")
            if isinstance(target.get(path[-1]), dict):
                section = "GRAPHGATE_" + "__".join(path).upper()
                raise ConfigError(f"{SECRETS_DIR_VAR}: file {entry.name} sets {section} as a "
                                  "whole, which other files set key by key")
            target[path[-1]] = entry.read_text().strip()
        return values
