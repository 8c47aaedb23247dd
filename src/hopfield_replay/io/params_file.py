"""The params file: read ``params.yaml`` and validate it as a whole into ``config.Config``.

``load_config(path)`` validates every section up front (``config`` holds the sections and their rules). The first
problem raises ``ParamsError`` with one line naming the dotted field and what is accepted, e.g.
``params.yaml: train_a.lr: Input should be a finite number, got inf``; a missing file, malformed YAML or a missing
section names the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from .config import OPTIONAL_SECTIONS, SECTIONS, Config, RuleError
from ..errors import UserError


class ParamsError(UserError):
    """A bad parameter: the message names the field and what is accepted."""


def validation_line(exc: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of validating ``model`` as one line, ``<dotted.field>: <what>``: a broken rule names its
    field (``RuleError``), an unknown key lists the known ones, a bad value is shown."""
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, RuleError):
        return f"{loc}.{cause.field}: {cause}" if loc else f"{cause.field}: {cause}"
    if err["type"] == "extra_forbidden":
        parent = model
        for part in err["loc"][:-1]:
            parent = parent.model_fields[part].annotation if isinstance(part, str) else parent
        known = ", ".join(getattr(parent, "model_fields", {}))
        what = "unknown section" if model is Config and len(err["loc"]) == 1 else "unknown key"
        return f"{loc}: {what}; known: {known}"
    msg = err["msg"].removeprefix("Value error, ")
    if "input" in err and len(repr(err["input"])) > 80:  # a validator's own message may echo the value whole
        msg = msg.replace(repr(err["input"]), excerpt(err["input"]))
    if err["type"] == "value_error":
        return f"{loc}: {msg}"
    return f"{loc}: {msg}, got {excerpt(err['input'])}"


def excerpt(value, limit: int = 80) -> str:
    """A value as an error shows it: its repr, cut to ``limit`` characters (a huge value is never echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validate_config(raw: dict) -> Config:
    """Validate a whole params mapping; the first problem raises ParamsError('<dotted.field>: <what>')."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be a mapping of sections (prepare:, train_a:, ...), got {type(raw).__name__}")
    try:
        return Config(**raw)
    except ValidationError as exc:
        raise ParamsError(validation_line(exc, Config)) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading YAML 1.2 floats with no dot (``1e-05``, as DVC's ``-S`` writes them).
    Refused: aliases (``*name``: a few lines of them can expand to billions of items) and a key given twice in one
    mapping (YAML would silently keep the last)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML aliases (*{event.anchor}) are not accepted in params; write the values out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {excerpt(key, 40)} is given twice in one mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str):
    """YAML text as the stages read params (PyYAML safe loading, plus YAML 1.2 floats such as 1e-05)."""
    return yaml.load(text, Loader=_Loader)


MAX_PARAMS_BYTES = 1 << 20  # a params or study file is a few KiB; a larger one is refused before it is parsed


def read_yaml_file(path: Path, error: type[UserError] = UserError):
    """A YAML file read as the stages read params; malformed YAML, aliases, a duplicated key, a file that is not
    UTF-8 text, not a regular file or larger than 1 MiB raise ``error`` naming the file (and the line)."""
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO or a device would block or never end
            raise error(f"{path}: not a regular file; pass the params file")
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise error(f"{path}: {path.stat().st_size} bytes, larger than a params file can be "
                        f"({MAX_PARAMS_BYTES} bytes); pass the params file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text; pass the params file (YAML)") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc}); pass a readable params file") from None
    try:
        return read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or ""
        if "alias" in problem or "given twice" in problem:
            raise error(f"{path}: {problem}{where}") from None
        raise error(f"{path}: not valid YAML{where}; fix the syntax") from None


def load_raw(path: str | Path) -> dict:
    """The params file as a plain mapping (not validated)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params")
    raw = read_yaml_file(path, ParamsError)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (prepare:, train_a:, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read and validate the whole params file. Every section that changes a result must be in the file: a missing
    one is an error, not a silent default."""
    try:
        raw = load_raw(path)
        config = validate_config(raw)
        missing = [name for name in SECTIONS if name not in raw and name not in OPTIONAL_SECTIONS]
        if missing:
            raise ParamsError(f"{path}: {missing[0]}: section missing; copy it from the shipped params.yaml "
                              f"(git show HEAD:params.yaml), or select a profile: python -m tools.profile")
        return config
    except ParamsError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ParamsError(f"{path}: {exc}") from None
