"""The one stage runner: the command line, the whole params file validated up front, and the error contract.

A stage is a function ``fn(cfg, args)`` decorated with ``@stage("x0", "samples", "out", seed=int)``: each name
becomes a required ``--name`` option (paths come only from the command line, as dvc.yaml passes them), plus the
required ``--params``. ``main(argv)`` then parses, loads and validates the whole params file (every section, so a
bad ``report.*`` value fails before any training), and calls ``fn``. A ``UserError`` (bad params, data, paths,
unreadable files) prints ``error: <what>`` on one line and exits 2; any other exception is a bug and shows its
traceback.

A training stage passes ``relaunch=data_parallel.launcher("train_a")``: with ``train_a.processes`` N > 1 the stage
starts N copies of itself under torch's elastic launcher, each training on its share of every batch, so
``dvc repro`` runs data parallel from the params alone (``hopfield_replay.runtime.data_parallel``).

A stage that draws passes ``figures=True``: matplotlib's Agg backend is set before ``fn`` runs (``draw_to_files``).
The library never sets a backend, so a notebook that imports it keeps its own.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hopfield_replay.io.config import Config
from hopfield_replay.io.params_file import load_config
from hopfield_replay.errors import UserError


def draw_to_files() -> None:
    """Figures go to PNG files, never to a screen: matplotlib's Agg backend. Called by the entry points that draw
    (stages with ``figures=True``, flows.study, tools.publish_study), never by the library."""
    import matplotlib

    matplotlib.use("Agg")


def check_distinct_paths(args: argparse.Namespace, paths: tuple[str, ...]) -> None:
    """An output (a ``--out*`` path, or report's ``--metrics-dir``) must not be an input, the params file or another
    output: one would destroy the other. Refused before anything is read."""
    outputs = [n for n in paths if n.startswith("out") or n == "metrics-dir"]
    named = {"params": args.params, **{n: getattr(args, n.replace("-", "_")) for n in paths}}
    seen: dict[Path, str] = {}
    for name in ["params", *[n for n in paths if n not in outputs], *outputs]:
        where = Path(os.path.abspath(named[name]))
        if name in outputs and where in seen:
            raise UserError(f"--{name} {named[name]}: is also --{seen[where]}; an output must not be an input, the "
                            "params file or another output: pass another path")
        seen.setdefault(where, name)


# errno -> the fix, for what the file system refuses (the outputs are written atomically: nothing half-written stays)
FILE_SYSTEM_REFUSALS = {
    errno.ENOSPC: "free disk space (or pass an output path on another disk) and run the stage again",
    errno.EDQUOT: "free space within your disk quota and run the stage again",
    errno.ENAMETOOLONG: "pass a shorter path",
    errno.EACCES: "pass a path you may read or write, or fix its permissions",
    errno.EPERM: "pass a path you may read or write, or fix its permissions",
    errno.EROFS: "pass an output path on a writable file system",
    errno.EILSEQ: "rename the path to UTF-8 text",
}


def stage(*paths: str, relaunch: Callable[[Config, list[str]], int | None] | None = None, figures: bool = False,
          **options: type) -> Callable:
    """Decorate ``fn(cfg, args)``: ``--params``, one required ``--<path>`` per name and ``--<option>`` per keyword.
    ``relaunch(cfg, command)``: None to run ``fn`` here, or the exit code after running ``command`` (this stage's
    ``[-m, module, *argv]``) some other way (training stages: as data-parallel processes). ``figures``: the stage
    draws (``draw_to_files`` before ``fn``)."""

    def decorate(fn: Callable[[Config, argparse.Namespace], None]) -> Callable[[list[str] | None], None]:
        module = sys.modules[fn.__module__]
        # run as `python -m stages.x`, the module is __main__: its spec keeps the real name for the usage line
        module_name = module.__spec__.name if module.__spec__ is not None else module.__name__

        def main(argv: list[str] | None = None) -> None:
            ap = argparse.ArgumentParser(prog=f"python -m {module_name}", description=module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
            ap.add_argument("--params", type=Path, required=True, help="the params file (params.yaml)")
            for name in paths:
                ap.add_argument(f"--{name}", type=Path, required=True, metavar="PATH")
            for name, kind in options.items():
                ap.add_argument(f"--{name}", type=kind, required=True)
            args = ap.parse_args(argv)
            logging.basicConfig(level=os.environ.get("HOPFIELD_REPLAY_LOG", "INFO"), format="%(message)s")
            try:
                check_distinct_paths(args, paths)
                cfg = load_config(args.params)
                if relaunch is not None:
                    code = relaunch(cfg, ["-m", module_name, *(sys.argv[1:] if argv is None else argv)])
                    if code is not None:
                        raise SystemExit(code)
                if figures:
                    draw_to_files()
                fn(cfg, args)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                raise SystemExit(2) from None
            except OSError as exc:  # what the file system refuses is the user's to fix; any other OSError is a bug
                if exc.errno not in FILE_SYSTEM_REFUSALS:
                    raise
                print(f"error: {exc.filename or 'a path'}: {exc.strerror}; {FILE_SYSTEM_REFUSALS[exc.errno]}",
                      file=sys.stderr)
                raise SystemExit(2) from None
            except UnicodeEncodeError as exc:
                if "surrogate" not in str(exc.reason):
                    raise
                print(f"error: a path given holds bytes that are not text ({exc.object[:80]!r}); rename it to "
                      "UTF-8", file=sys.stderr)
                raise SystemExit(2) from None

        main.__doc__ = fn.__doc__
        return main

    return decorate


def provenance(cfg: Config, *sections: str, seed: int, device, table: str) -> dict:
    """A table's provenance: the hash covers only the params ``sections`` it depends on (plus the device), so
    unrelated params leave its bytes, and everything DVC sees downstream of it, unchanged."""
    from hopfield_replay.runtime.devices import describe
    from hopfield_replay.io.tables import provenance as table_provenance

    params = {name: cfg.section(name) for name in ("device", *sections)}
    return table_provenance(params, seed=seed, device=describe(device) if not isinstance(device, str) else device,
                            table=table)
