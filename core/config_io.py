"""Loading a PipelineConfig from YAML and `--set section.field=value` overrides."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from core.config import PipelineConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; each line names the field and what is wrong."""


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"] == "extra_forbidden":
            message = "is not a known setting"
        elif item["type"] == "missing":
            message = "is required"
        lines.append(f"{loc} {message}" if loc else message)
    return "; ".join(lines)


def validate_config(values: Mapping[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {format_validation_error(exc)}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.tuning.max_jobs=8` -> (["training", "tuning", "max_jobs"], 8); values are YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.strip().split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc.problem})") from None
    return path, value


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of `values` with each override set (nested sections are created as needed)."""
    result = yaml.safe_load(yaml.safe_dump(values))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> PipelineConfig:
    """base (plain values) <- YAML file <- overrides, then validated."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} not found") from None
        except IsADirectoryError:
            raise ConfigError(f"configuration file {path} is a folder: give the YAML file in it") from None
        except PermissionError:
            raise ConfigError(f"configuration file {path} cannot be read (permission denied)") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not text (UTF-8): {exc.reason} at byte {exc.start}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping of sections, not {type(loaded).__name__}")
        values = _merge(values, loaded or {})
    return validate_config(apply_overrides(values, overrides))


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
