"""Read a YAML settings file into a strict pydantic model, with errors that point at ``file:line key``.

Deploy files and pipeline files are both read here: YAML -> ``${ENV}`` substitution -> the model.
Any problem is ONE :class:`~autoglm.errors.ConfigError` that names the file, the line and the key
path, e.g. ``autoglm.yaml:12 models[1].quantize: expected one of auto, none, ...; got 'int3'``
(with a count of further problems, if any). To know lines, the YAML is composed into nodes first
(every node has a ``start_mark``) and a table ``key path -> line`` is built beside the plain values;
pydantic's error locations are then mapped back through that table. Unknown keys get a did-you-mean.

``${VAR}`` and ``${VAR:-default}`` inside string values are replaced from the environment (``$${``
writes a literal ``${``); a variable that is unset and has no default is an error at its line.
This module knows nothing about engines, servers, pipelines or what the settings mean: the schema
and its cross-field rules are passed in.
"""
from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autoglm.errors import ConfigError

__all__ = ["parse_yaml_config", "load_yaml_config", "format_loc", "Loc"]

Loc = tuple[Any, ...]
Problems = Callable[[Any], list[tuple[Loc, str]]]

_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def format_loc(loc: Loc) -> str:
    """``('models', 1, 'quantize')`` -> ``models[1].quantize``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Located:
    """Plain values from YAML nodes plus the line (1-based) of every key path."""

    def __init__(self, name: str):
        self.name = name
        self.lines: dict[Loc, int] = {}

    def line_of(self, loc: Loc) -> int:
        for end in range(len(loc), -1, -1):  # the longest known prefix: a missing key points at its parent
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def error(self, loc: Loc, message: str) -> ConfigError:
        return ConfigError(message, where=f"{self.name}:{self.line_of(loc)} {format_loc(loc)}")

    def build(self, node: Any, loc: Loc, constructor: Any) -> Any:
        import yaml

        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise self.error(loc, f"keys must be strings; got {key!r}")
                if key in out:
                    self.lines[loc + (key,)] = key_node.start_mark.line + 1  # point at the repeat
                    raise self.error(loc + (key,), f"the key {key!r} appears twice in this mapping")
                self.lines[loc + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, loc + (key,), constructor)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, loc + (i,), constructor) for i, item in enumerate(node.value)]
        value = constructor.construct_object(node, deep=True)
        return self._substitute(value, loc) if isinstance(value, str) else value

    def _substitute(self, text: str, loc: Loc) -> str:
        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise self.error(loc, f"environment variable {name} is not set; export it, or write "
                                          f"${{{name}:-default}} to give a default")
                return default
            return value

        return _ENV_REF.sub(repl, text)


def parse_yaml_config(text: str, name: str, schema: type[Any], *, problems: Problems | None = None,
                      empty_hint: str = "", context: dict[str, Any] | None = None) -> Any:
    """Validate YAML ``text`` against the pydantic model ``schema``; ``name`` is what errors call the file.

    ``problems(config)`` returns cross-field problems as (key path, message); ``empty_hint`` finishes the
    message for an empty file; ``context`` is pydantic's validation context.
    """
    import yaml

    located = _Located(name)
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = None if root is None else located.build(root, (), loader)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"not valid YAML: {exc.problem or exc.context}", where=f"{name}:{line}") from None
    if not isinstance(data, dict):
        what = "empty" if data is None else f"a {type(data).__name__}, not a mapping"
        raise ConfigError(f"the file is {what}{'; ' + empty_hint if empty_hint else ''}", where=f"{name}:1")

    from pydantic import ValidationError

    try:
        config = schema.model_validate(data, context=context)
    except ValidationError as exc:
        found = [(tuple(e["loc"]), _message(e, schema)) for e in exc.errors(include_url=False)]
        raise _first(located, found) from None
    found = problems(config) if problems is not None else []
    if found:
        raise _first(located, found)
    return config


def load_yaml_config(path: str | Path, kind: str, schema: type[Any], **kwargs: Any) -> Any:
    """Read and validate a file; a missing or unreadable file is a :class:`ConfigError` too.
    ``kind`` names the file in messages ("deploy file", "pipeline file")."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{kind} {str(p)!r} does not exist; pass the path of a YAML file "
                          "(examples are in examples/)") from None
    except IsADirectoryError:
        raise ConfigError(f"{kind} {str(p)!r} is a directory; pass the path of a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {kind} {str(p)!r}: {exc}") from None
    return parse_yaml_config(text, str(path), schema, **kwargs)


def _first(located: _Located, problems: list[tuple[Loc, str]]) -> ConfigError:
    problems = [(_field_loc(located, loc), msg) for loc, msg in problems]
    # By line; on one line an unknown key first (a typo also makes the right key look missing).
    problems.sort(key=lambda p: (located.line_of(p[0]), not p[1].startswith("unknown key")))
    loc, message = problems[0]
    if len(problems) > 1:
        message += f" ({len(problems) - 1} more problem(s) in this file)"
    return located.error(loc, message)


def _field_loc(located: _Located, loc: Loc) -> Loc:
    """Drop what pydantic puts in an error's path that is not a key of the file: type tags (``'str'``,
    ``'list[str]'``) and a tagged union's tag (``train.tabular.target`` -> ``train.target``)."""
    out: Loc = ()
    for i, part in enumerate(loc):
        if isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none")):
            continue
        last = i == len(loc) - 1
        if isinstance(part, str) and not last and out + (part,) not in located.lines and out in located.lines:
            continue  # not a key at this place in the file: a union tag
        out += (part,)
    return out


def _message(err: Mapping[str, Any], schema: type[Any]) -> str:
    kind, ctx, value = err.get("type", ""), err.get("ctx") or {}, err.get("input")
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        allowed = _fields_at(schema, err["loc"][:-1])
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        did = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key {key!r}; {did}allowed here: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        return (f"{ctx.get('discriminator', 'the tag')}: expected one of "
                f"{str(ctx.get('expected_tags', '')).replace(chr(39), '')}; got {ctx.get('tag')!r}")
    if kind == "union_tag_not_found":
        return f"the key {ctx.get('discriminator', '')} is missing; it says which kind of section this is"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length', 1)} entry; got an empty list"
    if kind == "missing":
        return "this required key is missing"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"expected one of {', '.join(choices)}; got {value!r}"
    if kind == "value_error":
        return str(ctx.get("error", err.get("msg")))
    msg = str(err.get("msg", "invalid value"))
    shown = type(value).__name__ if isinstance(value, (dict, list)) else repr(value)
    return f"{msg[0].lower()}{msg[1:]}; got {shown}"


def _fields_at(schema: type[Any], loc: Loc) -> list[str]:
    """The keys the schema allows at ``loc`` (for did-you-mean); a tagged union follows its tag."""
    candidates = [schema]
    for part in loc:
        if isinstance(part, int):
            continue
        tagged = [c for c in candidates if part in _tag_values(c)]
        if tagged:
            candidates = tagged
            continue
        field = next((f for c in candidates for n, f in c.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        candidates = _models_in(field.annotation)
        if not candidates:
            return []
    if len(candidates) != 1:
        return []
    return [f.alias or n for n, f in candidates[0].model_fields.items()]


def _tag_values(model: Any) -> set[str]:
    """The literal values of a model's Literal fields (a discriminated union's tags)."""
    values: set[str] = set()
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is typing.Literal:
            values.update(str(a) for a in typing.get_args(f.annotation))
    return values


def _models_in(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
