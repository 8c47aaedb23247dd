"""Where a study's cells run: the Prefect task runner (a local or existing Dask cluster, or Ray), what one cell
holds there (GPUs), the Prefect API the workers report to (PREFECT_API_URL or a temporary local server), and the
cap on cells running at once (a Prefect tag concurrency limit). Used by flows/study.py."""

from __future__ import annotations

import contextlib
import os

from flows.prefect_server import temporary_prefect_server
from hopfield_replay.errors import UserError


def _prefect_ray():
    try:
        import prefect_ray
        import prefect_ray.context
    except ImportError:
        raise UserError("engine.runner: ray needs prefect-ray, which is not installed; pip install -e .[ray] "
                        "(or use the default, --engine dask)") from None
    return prefect_ray


def cell_resources(engine):
    """What one cell holds while it runs: engine.gpus_per_cell GPUs (a Dask resource annotation, or Ray's
    num_gpus), or nothing."""
    gpus = engine.gpus_per_cell
    if not gpus:
        return contextlib.nullcontext()
    if engine.runner == "ray":
        return _prefect_ray().context.remote_options(num_gpus=gpus)
    import dask

    return dask.annotate(resources={"GPU": gpus})


def engine_runner(engine):
    """The Prefect task runner: Ray (an address or a local Ray), an existing Dask cluster, or a local Dask cluster
    of engine.workers processes (one per engine.gpus_per_cell of engine.gpus when GPUs are listed), 1 thread each."""
    if engine.runner == "ray":
        return _prefect_ray().RayTaskRunner(address=engine.address)
    from distributed import Nanny, Scheduler, SpecCluster
    from prefect_dask import DaskTaskRunner

    if engine.address:
        return DaskTaskRunner(address=engine.address)
    gpus = engine.gpus_per_cell
    if engine.gpus:  # one worker per gpus_per_cell GPUs: it sees only those (CUDA_VISIBLE_DEVICES)
        slots = [engine.gpus[i:i + gpus] for i in range(0, len(engine.gpus) - gpus + 1, gpus)]
    else:
        slots = [None] * engine.workers
    threads = str(max(1, (os.cpu_count() or 1) // len(slots)))  # CPU threads of each cell's stages
    workers = {}
    for i, slot in enumerate(slots):
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slot))
        workers[f"cell-worker-{i}"] = {"cls": Nanny, "options": {
            "nthreads": 1, "env": env, "resources": {"GPU": len(slot)} if slot else None}}
    cluster = {"workers": workers, "scheduler": {"cls": Scheduler, "options": {"dashboard_address": ":0"}}}
    return DaskTaskRunner(cluster_class=SpecCluster, cluster_kwargs=cluster)


def check_dask_cluster(engine) -> None:
    """An existing Dask cluster must have workers, and offer the resource GPU when cells need it."""
    from distributed import Client

    try:
        with Client(engine.address, timeout=30) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
    except OSError as exc:
        raise UserError(f"engine.address: cannot reach the Dask scheduler {engine.address} ({exc})") from None
    if not workers:
        raise UserError(f"engine.address: the Dask scheduler {engine.address} has no workers; start some "
                        "(dask worker ADDRESS --nthreads 1)")
    if engine.gpus_per_cell and not any(w.get("resources", {}).get("GPU", 0) >= engine.gpus_per_cell
                                        for w in workers):
        raise UserError(f"engine.gpus_per_cell: no worker of {engine.address} offers GPU={engine.gpus_per_cell}; "
                        "start workers with --resources GPU=1 (one per GPU, e.g. dask-cuda's `dask cuda worker`)")


@contextlib.contextmanager
def prefect_api(engine):
    """PREFECT_API_URL when set; else a temporary local Prefect server (flows.prefect_server), its URL exported so
    that local workers (started after it) report to it. Workers of a remote cluster could not reach it: refused."""
    remote = engine.address and not engine.address.split("//")[-1].startswith(("127.", "localhost"))
    if remote and not os.environ.get("PREFECT_API_URL"):
        raise UserError("engine.address: the workers of a cluster must reach the Prefect API; start a server "
                        "(prefect server start --host 0.0.0.0) and set PREFECT_API_URL here and on every worker")
    with temporary_prefect_server():
        yield


def limit_concurrency(tag: str, limit: int | None) -> None:
    """A Prefect tag concurrency limit: at most ``limit`` cells of this study run at once (any engine)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if limit is None:
            with contextlib.suppress(Exception):  # none set before: nothing to lift
                client.delete_global_concurrency_limit_by_name(f"tag:{tag}")
        else:
            client.upsert_global_concurrency_limit_by_name(f"tag:{tag}", limit)
