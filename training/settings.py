"""Recipe settings as dataclasses: one ``--flag`` per field, a TOML file of flat keys (flags win), values coerced to
the field's type with a clear error, and the effective settings written back as TOML. Every recipe and dataset
builder reads its settings this way."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import tomllib

from .loop import ConfigError


def _field_kind(cls: type, name: str) -> str:
    hint = typing.get_type_hints(cls)[name]
    text = str(hint)
    if "list[str]" in text:
        return "list_str"
    if "list[int]" in text:
        return "list_int"
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    return "str"


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """``value`` (from TOML or a flag) as the type of field ``name`` of ``cls``; a ``ConfigError`` says what is wrong."""
    kind, default = _field_kind(cls, name), getattr(cls(), name)
    try:
        if kind.startswith("list"):
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return [int(v) for v in value] if kind == "list_int" else [str(v) for v in value]
        if kind == "bool":
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return None if value is None else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: bad value {value!r} for {name!r} (expected like {default!r})") from None


def load_toml(cls: type, path: str | os.PathLike, table: str) -> dict:
    """Flat keys (or a ``[table]`` section) of ``path``; unknown keys are an error listing the known ones."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    if isinstance(data.get(table), dict):
        data = {**{k: v for k, v in data.items() if k != table}, **data[table]}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))} in {path}; "
                          f"known keys: {', '.join(sorted(names))}")
    return {k: coerce(cls, k, v, str(path)) for k, v in data.items()}


def dump_toml(config: Any) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return json.dumps(v)

    return "".join(f"{k} = {fmt(v)}\n" for k, v in dataclasses.asdict(config).items() if v is not None)


def add_arguments(cls: type, parser: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """One flag per field of ``cls`` (``--name``; booleans also ``--no-name``); unset flags do not override TOML."""
    helps = helps or {}
    parser.add_argument("--config", help="TOML file with flat keys named like the flags; flags given here win")
    for f in dataclasses.fields(cls):
        kind, default = _field_kind(cls, f.name), getattr(cls(), f.name)
        text = (helps.get(f.name, "") + f" (default {default!r})").strip()
        flag = "--" + f.name
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif kind.startswith("list"):
            parser.add_argument(flag, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=text)


def resolve_config(cls: type, args: argparse.Namespace, table: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(cls, args.config, table))
    values.update({k: coerce(cls, k, v, "command line") for k, v in vars(args).items() if k in names})
    return cls(**values)


def config_header(num_processes: int, batch_size: int, command: str) -> str:
    """TOML comments recording the launch: ``config.toml`` keeps only settings, which parse back unchanged."""
    return (f"# written by: {' '.join(command.splitlines())}\n"
            f"# num_processes = {num_processes}; batch_size is per process: global batch = "
            f"{batch_size} x {num_processes} = {batch_size * num_processes}\n")


def recipe_parser(name: str, cls: type, doc: str, helps: dict[str, str] | None = None,
                  parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m segdrop.training <name>``: the module docstring's first paragraph, one flag per field."""
    parser = parser or argparse.ArgumentParser(prog=f"python -m segdrop.training {name}", description=doc.split("\n\n")[0])
    add_arguments(cls, parser, helps)
    return parser
