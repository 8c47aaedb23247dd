"""Select a parameter profile in one command: deep-merge a profile file into params.yaml, then run the pipeline
as usual (`dvc repro` or `make run`).

    python -m tools.profile profiles/sd-smoke.yaml                     # tiny random SD pipeline, CPU smoke run
    python -m tools.profile profiles/sd-v15-cifar10.yaml \\
        --set prepare.root=/data/cifar-10-batches-py --set model.sd.pretrained=/models/stable-diffusion-v1-5

A profile is a params file holding only the keys it changes (mappings merge key by key, lists and scalars
replace), plus an optional ``profile:`` section that is not a parameter: ``description``, ``expected_run_time``
and ``build_tiny_sd: {path, resolution, seed}`` (build the tiny random-weight SD pipeline there first, unless it
already exists, and point model.sd.pretrained at it). ``--set key.path=value`` (value read as YAML) overrides
after the merge. The merged params are validated as a whole before params.yaml is replaced, atomically, with its
comments kept (tools/params_yaml.py; any valid params.yaml, also as `dvc exp run -S` rewrites it). A bad value
is one line on stderr, exit status 2, and nothing written or built.

``--exp`` changes nothing in params.yaml and prints the equivalent `dvc exp run -S ...` command instead (a DVC
experiment; the tiny pipeline is still built if the profile asks for it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import yaml

from hopfield_replay.io.params_file import load_raw, read_yaml, validate_config
from hopfield_replay.errors import UserError
from tools.params_yaml import deep_merge, float_text, render_merged

META_KEY = "profile"
META_KEYS = ("description", "build_tiny_sd", "expected_run_time")


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
        return float_text(value)
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


def _has(d: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return False
        d = d[key]
    return True


def exp_command(overrides: dict, base: dict) -> str:
    """`dvc exp run -S key=value ...` for every override; a key that ``base`` lacks is added (Hydra's ``+key``)."""
    args = [f"{'' if _has(base, k) else '+'}{k}={_hydra_value(v)}" for k, v in leaves(overrides)]
    return "dvc exp run " + " ".join(f"-S {shlex.quote(a)}" for a in args)


def read_profile(path: Path) -> tuple[dict, dict]:
    """(parameter overrides, the profile's own section) of a profile file."""
    if not path.is_file():
        known = sorted(str(p) for p in Path("profiles").glob("*.yaml")) if Path("profiles").is_dir() else []
        raise UserError(f"profile: {path} does not exist; known profiles: {', '.join(known) or 'none'}")
    try:
        data = read_yaml(path.read_text())
    except yaml.YAMLError:
        raise UserError(f"profile: {path} is not valid YAML; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"profile: {path} must be a mapping of params sections, got {type(data).__name__}")
    meta = data.pop(META_KEY, None) or {}
    if not isinstance(meta, dict):
        raise UserError(f"profile.{META_KEY}: must be a mapping ({', '.join(META_KEYS)}), got {meta!r}")
    unknown = sorted(set(meta) - set(META_KEYS), key=str)
    if unknown:
        raise UserError(f"profile.{unknown[0]}: unknown key; known keys: {', '.join(META_KEYS)}")
    return data, meta


def tiny_spec(spec) -> tuple[Path, int, int]:
    if not isinstance(spec, dict) or "path" not in spec:
        raise UserError(f"profile.build_tiny_sd: must be a mapping with path (and resolution, seed), got {spec!r}")
    try:
        path, resolution, seed = Path(str(spec["path"])), int(spec.get("resolution", 16)), int(spec.get("seed", 0))
    except (TypeError, ValueError):
        raise UserError(f"profile.build_tiny_sd: resolution and seed must be integers, got {spec!r}") from None
    if resolution < 8 or resolution % 8:
        raise UserError(f"profile.build_tiny_sd.resolution: {resolution} must be a multiple of 8 (8, 16, ...)")
    return path, resolution, seed


def build_tiny(spec) -> None:
    """Build the tiny random-weight SD pipeline a smoke profile asks for, once (atomically)."""
    from hopfield_replay.io.tables import atomic_path

    path, resolution, seed = tiny_spec(spec)
    if (path / "model_index.json").is_file():
        print(f"profile: tiny Stable Diffusion pipeline already at {path}")
        return
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"profile.build_tiny_sd: {path} exists but holds no pipeline (no model_index.json); "
                        "remove it or choose another path")
    from hopfield_replay.models.tiny_sd import build_tiny_sd_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, is_dir=True) as tmp:
        build_tiny_sd_pipeline(tmp, resolution=resolution, seed=seed)
    print(f"profile: built a tiny random-weight Stable Diffusion pipeline ({resolution}x{resolution}) at {path}")


def warn_missing_inputs(config) -> None:
    """Warnings (not errors: they may be created before `dvc repro`) for local inputs that are not there yet."""
    model, prepare = config.model, config.prepare
    if model.family == "sd":
        source = Path(str(model.sd.pretrained)).expanduser()
        looks_local = str(model.sd.pretrained).startswith((".", "/", "~")) or source.exists()
        if looks_local and not (source / "model_index.json").is_file():
            print(f"warning: model.sd.pretrained: {model.sd.pretrained} holds no Stable Diffusion pipeline yet; "
                  "encode will stop with an error until it does (or pass --set model.sd.pretrained=...)",
                  file=sys.stderr)
    if prepare.dataset == "folder" and prepare.root and not Path(prepare.root).expanduser().is_dir():
        print(f"warning: prepare.root: {prepare.root} does not exist yet; prepare will stop with an error until it "
              "does (or pass --set prepare.root=...)", file=sys.stderr)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", help="a profile file, e.g. profiles/sd-smoke.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one dotted key after the merge (value read as YAML); repeatable")
    ap.add_argument("--exp", action="store_true",
                    help="leave params.yaml alone; print the equivalent `dvc exp run -S ...` command")
    ap.add_argument("--params", default="params.yaml", help="the params file to merge into (default: params.yaml)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    params_path = Path(args.params)
    raw = load_raw(params_path)
    overrides, meta = read_profile(Path(args.profile))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set: {item!r} is not KEY=VALUE (e.g. prepare.root=/data/cifar-10-batches-py)")
        try:
            set_dotted(overrides, key, read_yaml(value))
        except yaml.YAMLError:
            raise UserError(f"--set: the value of {key} is not valid YAML: {value!r}") from None
    tiny = meta.get("build_tiny_sd")
    if tiny is not None:  # the pipeline the profile builds is the one it uses
        set_dotted(overrides, "model.sd.pretrained", str(tiny_spec(tiny)[0]))
    config = validate_config(deep_merge(raw, overrides))
    if tiny is not None:
        build_tiny(tiny)
    warn_missing_inputs(config)
    if args.exp:
        print(exp_command(overrides, raw))
        return
    from hopfield_replay.io.tables import atomic_path

    text, kept = render_merged(params_path.read_text(), overrides)
    with atomic_path(params_path) as tmp:
        tmp.write_text(text)
    if not kept:
        print(f"warning: {params_path}: its comments could not be kept; written without them", file=sys.stderr)
    desc = f" ({meta['description']})" if meta.get("description") else ""
    print(f"profile: {Path(args.profile).name}{desc} merged into {params_path}; now run `dvc repro` (or `make run`)")
    if meta.get("expected_run_time"):
        print(f"profile: expected run time: {meta['expected_run_time']}")


def cli(argv=None) -> int:
    """``main`` with user errors as one line on stderr and exit status 2."""
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
