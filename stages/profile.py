"""profile: select a parameter profile in one command: deep-merge a profile file into params.yaml, then run the
pipeline as usual (`dvc repro` or `make run`).

    python -m stages.profile profiles/sd-smoke.yaml                     # tiny random SD pipeline, CPU smoke run
    python -m stages.profile profiles/sd-v15-cifar10.yaml \\
        --set prepare.root=/data/cifar-10-batches-py --set model.sd.pretrained=/models/stable-diffusion-v1-5

A profile is a params file holding only the keys it changes (mappings merge key by key, lists and scalars
replace), plus an optional ``profile:`` section that is not a parameter: ``description`` and ``build_tiny_sd:
{path, resolution, seed}`` (build the tiny random-weight SD pipeline there first, unless it already exists, and
point model.sd.pretrained at it). ``--set key.path=value`` (value read as YAML) overrides after the merge. The
result is validated like every stage's params before params.yaml is replaced (atomically, comments kept).

``--exp`` changes nothing in params.yaml and prints the equivalent `dvc exp run -S ...` command instead (DVC
experiment; the tiny pipeline is still built if the profile asks for it).
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import yaml

from hopfield_replay.params import ParamsError, read_yaml, validate_all
from stages import common

META_KEY = "profile"


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``: nested mappings merge, everything else (lists, scalars, null) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def leaves(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted key -> value for every non-mapping value (what `dvc exp run -S` sets)."""
    out = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(leaves(value, name + "."))
        else:
            out.append((name, value))
    return out


def set_dotted(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        if not isinstance(d.get(key), dict):
            d[key] = {}
        d = d[key]
    d[keys[-1]] = value


_PLAIN = re.compile(r"^[A-Za-z_/~][A-Za-z0-9_./~-]*$")


def _hydra_value(value) -> str:
    """A value in the override grammar of `dvc exp run -S` (Hydra): odd strings quoted, lists in brackets."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _float_text(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _float_text(value: float) -> str:
    text = repr(value)
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def exp_command(overrides: dict) -> str:
    args = [f"{k}={_hydra_value(v)}" for k, v in leaves(overrides)]
    return "dvc exp run " + " ".join(f"-S {shlex.quote(a)}" for a in args)


def read_profile(path: Path) -> tuple[dict, dict]:
    """(parameter overrides, the profile's own section) of a profile file, with one-line errors."""
    if not path.is_file():
        known = sorted(str(p) for p in Path("profiles").glob("*.yaml")) if Path("profiles").is_dir() else []
        raise FileNotFoundError(f"profile: {path} does not exist; known profiles: {', '.join(known) or 'none'}")
    try:
        data = read_yaml(path.read_text())
    except yaml.YAMLError:
        raise ParamsError(f"profile: {path} is not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise ParamsError(f"profile: {path} must be a mapping of params sections, got {type(data).__name__}")
    meta = data.pop(META_KEY, None) or {}
    if not isinstance(meta, dict):
        raise ParamsError(f"profile.{META_KEY}: must be a mapping (description, build_tiny_sd), got {meta!r}")
    unknown = sorted(set(meta) - {"description", "build_tiny_sd", "expected_run_time"})
    if unknown:
        raise ParamsError(f"profile.{unknown[0]}: unknown key; known keys: description, build_tiny_sd, expected_run_time")
    return data, meta


def tiny_spec(spec) -> tuple[Path, int, int]:
    if not isinstance(spec, dict) or "path" not in spec:
        raise ParamsError(f"profile.build_tiny_sd: must be a mapping with path (and resolution, seed), got {spec!r}")
    try:
        return Path(str(spec["path"])), int(spec.get("resolution", 16)), int(spec.get("seed", 0))
    except (TypeError, ValueError):
        raise ParamsError(f"profile.build_tiny_sd: resolution and seed must be integers, got {spec!r}") from None


def build_tiny(spec) -> None:
    """Build the tiny random-weight SD pipeline a smoke profile asks for, once (atomically)."""
    from hopfield_replay.tables import atomic_path

    path, resolution, seed = tiny_spec(spec)
    if (path / "model_index.json").is_file():
        print(f"profile: tiny Stable Diffusion pipeline already at {path}")
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"profile.build_tiny_sd: {path} exists but holds no pipeline (no model_index.json); "
                         "remove it or choose another path")
    from hopfield_replay.stable_diffusion import build_tiny_sd_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, is_dir=True) as tmp:
        build_tiny_sd_pipeline(tmp, resolution=resolution, seed=seed)
    print(f"profile: built a tiny random-weight Stable Diffusion pipeline ({resolution}x{resolution}) at {path}")


def _float_repr(representer, value: float):
    """Floats that PyYAML (YAML 1.1) also reads as floats: 1.0e-05, not 1e-05."""
    if value != value:
        text = ".nan"
    elif value in (float("inf"), float("-inf")):
        text = ".inf" if value > 0 else "-.inf"
    else:
        text = _float_text(value)
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def render_params(text: str, overrides: dict) -> str:
    """params.yaml's text with the overrides applied: comments, order and untouched values kept (ruamel round
    trip); checked to read back (with PyYAML, as the stages read it) as the plain merge, else a plain dump."""
    merged = deep_merge(read_yaml(text) or {}, overrides)
    try:
        import io

        from ruamel.yaml import YAML
        from ruamel.yaml.comments import CommentedSeq
    except ImportError:  # pragma: no cover - ruamel comes with DVC
        return yaml.safe_dump(merged, sort_keys=False)
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    rt.representer.add_representer(float, _float_repr)
    doc = rt.load(text)

    def flow(value):
        if isinstance(value, list):  # lists in flow style, [a, b], as params.yaml writes them
            seq = CommentedSeq([flow(v) for v in value])
            seq.fa.set_flow_style()
            return seq
        if isinstance(value, dict):
            return {k: flow(v) for k, v in value.items()}
        return value

    def apply(node, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                apply(node[key], value)
            elif key in node and type(node[key]) is type(value) and node[key] == value:
                continue  # unchanged: keep its formatting
            else:
                node[key] = flow(copy.deepcopy(value))

    apply(doc, overrides)
    buf = io.StringIO()
    rt.dump(doc, buf)
    out = buf.getvalue()
    if read_yaml(out) != merged:
        return yaml.safe_dump(merged, sort_keys=False)
    return out


def write_params(params_path: Path, overrides: dict) -> None:
    """Apply the overrides to params.yaml in place (comments kept), atomically."""
    from hopfield_replay.tables import atomic_path

    text = render_params(params_path.read_text(), overrides)
    with atomic_path(params_path) as tmp:
        tmp.write_text(text)


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("profile", help="a profile file, e.g. profiles/sd-smoke.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one dotted key after the merge (value read as YAML); repeatable")
    ap.add_argument("--exp", action="store_true",
                    help="leave params.yaml alone; print the equivalent `dvc exp run -S ...` command")
    args = ap.parse_args(argv)
    params_path = Path(args.params)
    raw = common.load(args)
    overrides, meta = read_profile(Path(args.profile))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set: {item!r} is not KEY=VALUE (e.g. prepare.root=/data/cifar-10-batches-py)")
        try:
            set_dotted(overrides, key, read_yaml(value))
        except yaml.YAMLError:
            raise ParamsError(f"--set: the value of {key} is not valid YAML: {value!r}") from None
    tiny = meta.get("build_tiny_sd")
    if tiny is not None:  # the pipeline the profile builds is the one it uses
        set_dotted(overrides, "model.sd.pretrained", str(tiny_spec(tiny)[0]))
    merged = deep_merge(raw, overrides)
    parsed = validate_all(merged)
    if tiny is not None:
        build_tiny(tiny)
    model = parsed["model"]
    if model.family == "sd":
        source = Path(str(model.sd.pretrained)).expanduser()
        looks_local = str(model.sd.pretrained).startswith((".", "/", "~")) or source.exists()
        if looks_local and not (source / "model_index.json").is_file():
            print(f"warning: model.sd.pretrained: {model.sd.pretrained} holds no Stable Diffusion pipeline yet; "
                  "encode will stop with an error until it does (or pass --set model.sd.pretrained=...)", file=sys.stderr)
    root = merged.get("prepare", {}).get("root")
    if merged.get("prepare", {}).get("dataset") == "folder" and root and not Path(str(root)).expanduser().is_dir():
        print(f"warning: prepare.root: {root} does not exist yet; prepare will stop with an error until it does "
              "(or pass --set prepare.root=...)", file=sys.stderr)
    name = Path(args.profile).name
    if args.exp:
        print(exp_command(overrides))
        return
    write_params(params_path, overrides)
    desc = f" ({meta['description']})" if meta.get("description") else ""
    print(f"profile: {name}{desc} merged into {params_path}; now run `dvc repro` (or `make run`)")
    if meta.get("expected_run_time"):
        print(f"profile: expected run time: {meta['expected_run_time']}")


if __name__ == "__main__":
    common.run(main)
