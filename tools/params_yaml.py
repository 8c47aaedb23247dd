"""Merge overrides into a params file's YAML text, keeping its comments, key order and untouched values.

Any valid params file is accepted, also as DVC rewrites it after `dvc exp run -S` (block-style lists, ``key:``
for null, unquoted strings, 1e-05 floats). The edit is a ruamel.yaml round trip; lists of scalars are written in
flow style, ``[a, b]``, and nulls as ``null``, as params.yaml writes them (undoing DVC's restyling). The result is
always checked to read back, as the stages read params, exactly as the plain merge; when the comment-keeping edit
cannot guarantee that, the merge is written plainly instead (comments lost, and the caller is told).
"""

from __future__ import annotations

import copy
import io

import yaml

from hopfield_replay.io.params_file import read_yaml


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``: nested mappings merge key by key, everything else (lists, scalars, null)
    replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def float_text(value: float) -> str:
    """A float as text that YAML 1.1 readers (PyYAML) also read as a float: 1.0e-05, not 1e-05."""
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def render_merged(text: str, overrides: dict) -> tuple[str, bool]:
    """(the YAML text of ``text`` merged with ``overrides``, whether comments were kept)."""
    merged = deep_merge(read_yaml(text) or {}, overrides)
    try:
        out = _round_trip(text, overrides)
    except Exception:  # noqa: BLE001 - any ruamel failure: fall back to the plain merge below
        out = None
    if out is not None and _reads_as(out, merged):
        return out, True
    plain = yaml.safe_dump(merged, sort_keys=False, default_flow_style=None, width=120)
    if not _reads_as(plain, merged):
        raise ValueError("the merged params do not survive a YAML round trip")  # a bug, not a user error
    return plain, False


def _reads_as(text: str, expected: dict) -> bool:
    try:
        return read_yaml(text) == expected
    except yaml.YAMLError:
        return False


# -- the comment-keeping edit (ruamel.yaml round trip) ------------------------------------------------------------

def _round_trip(text: str, overrides: dict) -> str:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):  # a subclass: ruamel's representer tables are class-wide
        pass

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    Representer.add_representer(float, lambda r, v: r.represent_scalar("tag:yaml.org,2002:float", float_text(v)))
    rt = YAML()
    rt.Representer = Representer
    rt.preserve_quotes = True
    rt.width = 120
    doc = rt.load(text)
    if doc is None:
        doc = CommentedMap()
    _restyle(doc)
    _apply(doc, overrides)
    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()


def _comment(value: str, column: int = 0):
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    return CommentToken(value, CommentMark(column))


def _restyle(node) -> None:
    """Undo DVC's restyling in place: lists of scalars back in flow style (``_to_flow``), and floats in exponent
    notation (DVC writes 1e-05) rewritten so that YAML 1.1 readers (PyYAML) also read them as floats (1.0e-05)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarfloat import ScalarFloat

    items = node.items() if isinstance(node, CommentedMap) else enumerate(node)
    for key, value in list(items):
        if isinstance(value, ScalarFloat) and value._exp:
            node[key] = float(value)
        elif isinstance(value, (CommentedMap, CommentedSeq)):
            _restyle(value)
            if isinstance(node, CommentedMap) and _block_scalar_list(value):
                _to_flow(node, key, value)


def _to_flow(node, key, seq) -> None:
    """``key: [a, b]  # comment`` for the block list ``seq`` (one item a line) under ``key`` of ``node``: the
    comment on the key's line stays on it; comment lines between the key and its first item (where a block list
    puts the lines that followed a flow list) and the lines after the last item (blank lines, the next section's
    heading) follow it. A list with comments on its items stays a block."""
    last = len(seq) - 1
    item_comments = {i: c for i, c in seq.ca.items.items() if c and any(t is not None for t in c)}
    tail = ""
    if last in item_comments:
        tokens = [t for t in item_comments.pop(last) if t is not None]
        if len(tokens) != 1 or not tokens[0].value.startswith("\n"):
            return
        tail = tokens[0].value[1:]  # the lines after the last item's line
    entry = node.ca.items.get(key) or [None, None, None, None]
    head = entry[2] if len(entry) > 2 else None
    eol, _, between = head.value.partition("\n") if head is not None else ("", "", "")
    if item_comments or any(t for i, t in enumerate(entry) if i != 2):
        return
    seq.ca.items.clear()
    seq.ca.comment = None
    seq.fa.set_flow_style()
    if eol or between or tail:
        column = head.column if head is not None else 0
        node.ca.items[key] = [None, None, _comment(f"{eol}\n{between}{tail}", column), None]
    else:
        node.ca.items.pop(key, None)


def _block_scalar_list(value) -> bool:
    from ruamel.yaml.comments import CommentedSeq

    return (isinstance(value, CommentedSeq) and not value.fa.flow_style() and len(value) > 0
            and not any(isinstance(v, (dict, list)) for v in value))


def _apply(node, overrides: dict) -> None:
    """Merge ``overrides`` into the round-trip mapping ``node`` in place; unchanged values keep their formatting."""
    for key, value in overrides.items():
        if key not in node:
            _append(node, key, value)
        elif isinstance(value, dict) and isinstance(node[key], dict):
            _apply(node[key], value)
        elif _plain(node[key]) != _plain(value):
            node[key] = _new(value)


def _append(node, key, value) -> None:
    """A new key at the end of ``node``; the lines after the old last key (blank lines, the next section's
    heading) move after it."""
    last = next(reversed(node), None) if len(node) else None
    node[key] = _new(value)
    entry = node.ca.items.get(last) if last is not None else None
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None or "\n" not in token.value.rstrip("\n"):
        return
    eol, _, tail = token.value.partition("\n")
    node.ca.items[key] = [None, None, _comment("\n" + tail), None]
    if eol.strip():
        token.value = eol + "\n"
    else:
        entry[2] = None


def _new(value):
    """A fresh round-trip node: mappings in block style, lists in flow style."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        return CommentedMap((k, _new(v)) for k, v in value.items())
    if isinstance(value, list):
        seq = CommentedSeq(_new(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    return value


def _plain(value):
    """``value`` as plain data tagged with its types (True is not 1, 1 is not 1.0), for comparisons."""
    if isinstance(value, dict):
        return ("map", {k: _plain(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("list", [_plain(v) for v in value])
    for typ in (bool, int, float, str):
        if isinstance(value, typ):
            return (typ.__name__, typ(value))
    return (type(value).__name__, value)
