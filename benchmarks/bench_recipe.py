"""Which training recipe reaches a learned model A soonest on the CPU? Quality per CPU-minute, recipes side by side.

    python benchmarks/bench_recipe.py                    # the recipes of docs/recipe.md, at 600, 1200 and 2000 steps
    python benchmarks/bench_recipe.py --quick            # tiny sizes: checks that the benchmark runs (~1 min)
    python benchmarks/bench_recipe.py --channels 16 32 32 --recipes cosine-1e-3-ema --steps 4000 --task-b 1600
    python benchmarks/bench_recipe.py --task-b 300 600   # then fine-tune the best model A on task B for these steps
    python benchmarks/bench_recipe.py --model-a data/models/task_a --classifier data/models/classifier \
        --task-b 800 1200 --b-recipes cosine-1e-3-ema cosine-2e-3-ema --b-seeds 1 3   # task-B recipes from a saved A
    python benchmarks/bench_recipe.py --model-a data/models/task_a --classifier data/models/classifier \
        --task-b 1600 --b-recipes warmup-2e-3-ema --b-seeds 1 2 --batch 32 --no-levers   # another batch size

Each recipe trains model A (the default UNet, task A of the embedded MNIST 5k at 16x16) for every step count (a
separate run: warmup and decay follow the run's length), samples it with DDIM from the same initial noise, and
prints per run the CPU seconds, the mean loss of its last 50 steps, the classifier's confident share of task-A
samples (against real held-out task-A images, the floor), the Frechet distance in the classifier's feature space
(against the real floor) and whether the run passes the learned rule of params.yaml (``generation``). A second
table times one training step with channels-last, bf16 autocast and torch.compile against the plain eager step
(ratios measured in one run). Figures vary by about 20% from run to run on these machines. Training follows
params.yaml's `cpu_bf16` (model A: train_a's, task B: train_b's); `--channels` swaps in another UNet width,
`--batch` another batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from hopfield_replay.io.config import ModelParams
from hopfield_replay.io.data import load_mnist5k, resize, to_model_range
from hopfield_replay.io.params_file import load_config
from hopfield_replay.measures.classifier import train_classifier
from hopfield_replay.measures.generation import frechet_distance, is_learned, judge, sample
from hopfield_replay.models import TrainConfig, build_model, train_denoiser

RECIPES = {  # name: the TrainConfig fields that differ from the plain loop
    "constant-2e-4": dict(lr=2e-4, lr_schedule="constant", lr_warmup_steps=0, ema_decay=None),
    "cosine-1e-3-ema": dict(lr=1e-3, lr_schedule="cosine", lr_warmup_steps=100, ema_decay=0.999),
    "cosine-2e-3-ema": dict(lr=2e-3, lr_schedule="cosine", lr_warmup_steps=100, ema_decay=0.999),
    "warmup-1e-3-ema": dict(lr=1e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=0.999),
    "warmup-2e-3-ema": dict(lr=2e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=0.999),
    "warmup-2e-3-ema995": dict(lr=2e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=0.995),
    "warmup-2e-3-ema99": dict(lr=2e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=0.99),
    "warmup-3e-3-ema995": dict(lr=3e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=0.995),
    "warmup-2e-3": dict(lr=2e-3, lr_schedule="constant_with_warmup", lr_warmup_steps=100, ema_decay=None),
}


def quality(model, clf, real_held, real_ref, other_held, classes, g, n: int, ddim: int, seed: int = 0) -> dict:
    images = sample(model, tuple(real_ref.shape[1:]), n, steps=ddim, seed=seed)
    j, floor = judge(clf, images, classes, g.confidence), judge(clf, real_held, classes, g.confidence)
    fd, fd_floor = frechet_distance(clf, images, real_ref), frechet_distance(clf, real_held, real_ref)
    other_fd = frechet_distance(clf, other_held, real_ref)
    return {"share": j.confident_share, "floor": floor.confident_share, "fd": fd, "fd_floor": fd_floor,
            "classes": np.round(j.histogram[classes], 2).tolist(),
            "other_fd": other_fd,
            "learned": is_learned(j.confident_share, floor.confident_share, fd, other_fd,
                                  min_ratio=g.learned_min_share_ratio, max_fd_share=g.learned_max_fd_share)}


def step_times(model_params: ModelParams, x0: torch.Tensor, steps: int) -> None:
    """Seconds per training step, plain eager and with each CPU lever, as ratios to eager (one run)."""
    levers = {"eager": {}, "channels_last": {"channels_last": True}, "bf16 autocast": {"cpu_bf16": True},
              "bf16 + ch-last": {"cpu_bf16": True, "channels_last": True}, "compile": {"compile_unet": True}}
    base = None
    print(f"\n{'lever':<16}{'s/step':>8}{'vs eager':>10}")
    for name, kw in levers.items():
        model = build_model(model_params, x0.shape[1:], seed=0)
        cfg = TrainConfig(steps=steps + 5, batch_size=64, seed=0)
        try:
            t = time.process_time()
            train_denoiser(model, x0, cfg, progress=False, **kw)
            per = (time.process_time() - t) / (steps + 5)
        except Exception as exc:  # a lever that does not run here is reported, not fatal
            print(f"{name:<16}failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        base = base or per
        print(f"{name:<16}{per:>8.3f}{base / per:>10.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--steps", nargs="+", type=int, default=[600, 1200, 2000])
    ap.add_argument("--task-b", nargs="*", type=int, default=[], help="task-B step counts from the best model A")
    ap.add_argument("--model-a", help="a saved model A folder (the train_a stage's): no model A is trained here")
    ap.add_argument("--b-recipes", nargs="+", choices=list(RECIPES),
                    help="task-B recipes (default: the best model A's own)")
    ap.add_argument("--b-seeds", nargs="+", type=int, default=[1], help="train_b seeds of each task-B run")
    ap.add_argument("--no-levers", action="store_true", help="skip the table of CPU levers")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--ddim", type=int, default=50)
    ap.add_argument("--classifier", help="a folder written by the classifier stage (default: train one here)")
    ap.add_argument("--channels", nargs="+", type=int,
                    help="the UNet's block_out_channels instead of params.yaml's (e.g. 16 32 32: a narrower model)")
    ap.add_argument("--batch", type=int, help="the batch size of every run here instead of params.yaml's")
    args = ap.parse_args()
    cfg = load_config("params.yaml")
    if args.channels:  # validated as params.yaml's model section is
        from pydantic import ValidationError

        try:
            widened = {**cfg.model.model_dump(), "block_out_channels": args.channels}
            model_params = type(cfg.model).model_validate(widened)
        except ValidationError as exc:
            ap.error(f"--channels {' '.join(map(str, args.channels))}: {exc.errors()[0]['msg']}")
        cfg = cfg.model_copy(update={"model": model_params})
    if args.batch is not None:
        if args.batch < 1:
            ap.error(f"--batch {args.batch}: a batch size is at least 1")
        cfg = cfg.model_copy(update={"train_a": cfg.train_a.model_copy(update={"batch_size": args.batch}),
                                     "train_b": cfg.train_b.model_copy(update={"batch_size": args.batch})})
    g, c = cfg.generation, cfg.classifier
    if args.quick:
        args.steps, args.samples, args.ddim, args.recipes = [20], 32, 5, args.recipes[:2]
    torch.manual_seed(0)
    images, labels = load_mnist5k()
    x = to_model_range(resize(torch.from_numpy(images), cfg.prepare.resolution))
    if args.classifier:  # the classifier stage's folder: same data, same split (classifier.json)
        from hopfield_replay.measures.classifier import ImageClassifier

        info = json.loads((Path(args.classifier) / "classifier.json").read_text())
        clf = SimpleNamespace(model=ImageClassifier.from_pretrained(args.classifier).eval(), accuracy=info["accuracy"],
                              holdout=np.flatnonzero(np.isin(np.arange(len(labels)), info["holdout_sample_ids"])))
    else:
        clf = train_classifier(x, labels, steps=60 if args.quick else c.steps, batch_size=c.batch_size, lr=c.lr,
                               width=c.width, holdout_fraction=c.holdout_fraction, seed=c.seed)
    print(f"classifier: held-out accuracy {clf.accuracy:.3f}", flush=True)
    held = np.zeros(len(labels), bool)
    held[clf.holdout] = True

    def task(classes):
        m = np.isin(labels, classes)
        return (x[torch.from_numpy(m & ~held)], x[torch.from_numpy(m & held)], torch.from_numpy(m & ~held))

    ref_a, held_a, _ = task(cfg.prepare.task_a)
    _, held_b_all, _ = task(cfg.prepare.task_b)
    x0_a = x[torch.from_numpy(np.isin(labels, cfg.prepare.task_a))]
    print(f"\n{'recipe':<18}{'steps':>6}{'cpu s':>8}{'loss':>8}{'share':>7}{'floor':>7}{'FD':>8}{'FD floor':>9}"
          f"{'other':>7}  learned  task-A class shares")
    best = None
    if args.model_a:  # a saved model A: judged here, then fine-tuned on task B
        from hopfield_replay.models import load_model

        model = load_model(args.model_a)
        q = quality(model, clf.model, held_a, ref_a, held_b_all, cfg.prepare.task_a, g, args.samples, args.ddim)
        print(f"{'(saved) ' + args.model_a:<32}{q['share']:>7.2f}{q['floor']:>7.2f}{q['fd']:>8.2f}{q['fd_floor']:>9.2f}"
              f"{q['other_fd']:>7.1f}  {'yes' if q['learned'] else 'no':<8} {q['classes']}", flush=True)
        best, args.recipes = (q["share"], "saved", 0, model), []
    for name in args.recipes:
        for steps in args.steps:
            model = build_model(cfg.model, x0_a.shape[1:], seed=cfg.train_a.seed)
            tc = TrainConfig(steps=steps, batch_size=cfg.train_a.batch_size, seed=cfg.train_a.seed, **RECIPES[name])
            t = time.process_time()
            losses = train_denoiser(model, x0_a, tc, progress=False, cpu_bf16=cfg.train_a.cpu_bf16)
            cpu = time.process_time() - t
            q = quality(model, clf.model, held_a, ref_a, held_b_all, cfg.prepare.task_a, g, args.samples, args.ddim)
            print(f"{name:<18}{steps:>6}{cpu:>8.0f}{np.mean(losses[-50:]):>8.4f}{q['share']:>7.2f}{q['floor']:>7.2f}"
                  f"{q['fd']:>8.2f}{q['fd_floor']:>9.2f}{q['other_fd']:>7.1f}  {'yes' if q['learned'] else 'no':<8} "
                  f"{q['classes']}", flush=True)
            if best is None or q["share"] > best[0]:
                best = (q["share"], name, steps, model)
    if args.task_b:
        _, name, steps, model_a = best
        ref_b, held_b, _ = task(cfg.prepare.task_b)
        x0_b = x[torch.from_numpy(np.isin(labels, cfg.prepare.task_b))]
        print(f"\ntask B from model A ({name}, {steps} steps)")
        for b_name in args.b_recipes or [name]:
            for steps_b in args.task_b:
                for seed in args.b_seeds:
                    model = build_model(cfg.model, x0_a.shape[1:], seed=cfg.train_a.seed)
                    model.unet.load_state_dict(model_a.unet.state_dict())
                    tc = TrainConfig(steps=steps_b, batch_size=cfg.train_b.batch_size, seed=seed, **RECIPES[b_name])
                    t = time.process_time()
                    train_denoiser(model, x0_b, tc, progress=False, cpu_bf16=cfg.train_b.cpu_bf16)
                    cpu = time.process_time() - t
                    q = quality(model, clf.model, held_b, ref_b, held_a, cfg.prepare.task_b, g, args.samples,
                                args.ddim)
                    qa = quality(model, clf.model, held_a, ref_a, held_b, cfg.prepare.task_a, g, args.samples,
                                 args.ddim)
                    print(f"task B {b_name:<16}{steps_b:>5} steps seed {seed}, {cpu:.0f} cpu s: task-B share "
                          f"{q['share']:.2f} (floor {q['floor']:.2f}, ratio {q['share'] / q['floor']:.2f}), FD "
                          f"{q['fd']:.2f} (floor {q['fd_floor']:.2f}), learned {q['learned']}; task-A share left "
                          f"{qa['share']:.2f}", flush=True)
    if not args.no_levers:
        step_times(cfg.model, x0_a, 3 if args.quick else 20)


if __name__ == "__main__":
    main()
