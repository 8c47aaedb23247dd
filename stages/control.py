"""control: continue the task-A model on task A itself, with train_b's settings and the first seed of `seeds`, then
measure its task-A reconstruction error exactly as `forgetting` measures the task-B models (one process: the
control trains without data parallel).

    change(t) = error_control(t) - error_a(t)   (absolute; relative = log ratio), per task-A sample

No task changes here, so wherever the change is negative the task-A error still falls with more training alone:
at those t, "forgetting" after task B is confounded with learning that model A had not finished. The report
states at which t that holds. Its training curves (task A, as train_a's) go to ``--out-curves``.
"""

from __future__ import annotations

from hopfield_replay.io.tables import check_output, load_task, write_table
from hopfield_replay.measures.curves import training_curves
from hopfield_replay.measures.reconstruction import measure_forgetting
from hopfield_replay.models import CheckpointPolicy, TrainConfig, load_model, train_and_save
from hopfield_replay.runtime.devices import resolve_device
from stages.forgetting import task_a_errors
from stages.runner import provenance, stage


@stage("x0", "samples", "scores", "model", "out-model", "out", "out-curves")
def main(cfg, args):
    fp, seed, device = cfg.forgetting, cfg.seeds[0], resolve_device(cfg.device)
    check_output(args.out_model, is_dir=True)
    check_output(args.out)
    check_output(args.out_curves, is_dir=True)
    error_a = task_a_errors(args.scores, fp.timesteps)
    model = load_model(args.model)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    config = TrainConfig(**cfg.train_b.loop_settings(), seed=seed, replay_fraction=0.0)
    train_and_save(model, x_a, labels_a, config, device, args.out_model, desc=f"control (task A again) seed {seed}",
                   checkpoints=CheckpointPolicy.from_params(cfg.execution),
                   **{**cfg.train_b.speed_settings(), "threads": 0},  # a plain stage, alone: every core
                   curves=training_curves(cfg.curves, {"task_a": (x_a, ids_a, labels_a)},
                                          cpu_bf16=cfg.train_b.cpu_bf16),
                   curves_out=args.out_curves)
    control = load_model(args.out_model)
    df = measure_forgetting(control, x_a, ids_a, error_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed,
                            space=fp.space, batch_size=fp.batch_size, device=device).assign(seed=seed)
    write_table(df, args.out, table="control",
                meta=provenance(cfg, "seeds", "train_b", "forgetting", seed=fp.noise_seed, device=device,
                                table="control"))
    means = df.groupby("t")[["absolute", "relative"]].mean()
    print("control (task A continued, no task change), mean change over samples: " + ", ".join(
        f"t={t}: {r.absolute:.4g} abs, {r.relative:.3f} log-ratio" for t, r in means.iterrows()))


if __name__ == "__main__":
    main()
