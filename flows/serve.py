"""Serve the pipeline flow as a Prefect deployment on a cron schedule, against a local Prefect server.

    prefect server start --host 127.0.0.1 --port 4200 --analytics-off        # terminal 1 (or: make server)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve \\
        --cron "0 3 * * *"                                                     # terminal 2 (or: make serve)

The serving process creates the deployment, the server's scheduler creates the scheduled runs, and this process
executes them when they are due (each run is the pipeline flow: DVC decides what is out of date).
Stop it with Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.pipeline import ROOT, pipeline  # sets the offline Prefect environment first

DEFAULT_CRON = "0 3 * * *"


def build_deployment(name: str, cron: str, repo_root: str, timezone: str = "UTC"):
    from prefect.schedules import Cron

    return pipeline.to_deployment(
        name=name,
        schedule=Cron(cron, timezone=timezone),
        parameters={"repo_root": repo_root},
        description="hopfield-replay pipeline: every DVC stage in order (dvc repro --single-item per stage).",
        tags=["hopfield-replay"],
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="nightly", help="the deployment's name (default: nightly)")
    ap.add_argument("--cron", default=DEFAULT_CRON, help=f"cron schedule (default: {DEFAULT_CRON!r}, daily 03:00)")
    ap.add_argument("--timezone", default="UTC", help="the cron schedule's time zone (default: UTC)")
    ap.add_argument("--repo-root", default=str(ROOT),
                    help="the project each run runs: a git + DVC repository with dvc.yaml and params.yaml "
                         "(default: this checkout)")
    args = ap.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set; start a server (make server) and set "
              "PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return 2
    from prefect import serve

    deployment = build_deployment(args.name, args.cron, args.repo_root, args.timezone)
    print(f"serving deployment 'hopfield-replay-pipeline/{args.name}' on cron {args.cron!r} ({args.timezone})")
    serve(deployment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
