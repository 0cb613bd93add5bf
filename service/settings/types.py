"""Field types shared by the settings sections."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic_settings import NoDecode


def split_commas(value: Any) -> Any:
    """`a, b` from an env var or secrets file becomes ["a", "b"]; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


# A list that env vars may give as comma-separated text (TOML gives a real array).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]


class Section(BaseModel):
    """One `[section]` of the config file."""

    # A typo in a config file must stop start-up, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)
