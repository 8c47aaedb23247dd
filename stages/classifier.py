"""classifier: train the judge of what every model generates, a small CNN on every class of the prepared images.

A seeded ``classifier.holdout_fraction`` of every class is held out: its accuracy is reported, and the measures of
``generate`` are only trusted above ``classifier.min_accuracy`` (below it the stage refuses, exit 2, nothing
written). Saved with ``save_pretrained`` (config.json + safetensors) beside ``classifier.json`` (accuracy, per
class, the held-out sample_ids).
"""

from __future__ import annotations

import json

import numpy as np

from hopfield_replay.errors import UserError
from hopfield_replay.io.tables import atomic_path, check_output, load_tensors, read_table
from hopfield_replay.measures.classifier import train_classifier
from stages.runner import stage


@stage("images", "samples", "out")
def main(cfg, args):
    c = cfg.classifier
    check_output(args.out, is_dir=True)
    tensors = load_tensors(args.images, keys=("images", "sample_id"))
    samples = read_table(args.samples, columns=["sample_id", "label"]).set_index("sample_id")
    ids = tensors["sample_id"].numpy()
    if not np.isin(ids, samples.index.to_numpy()).all():
        raise UserError(f"{args.images}: holds sample_ids that {args.samples} does not list; rerun prepare")
    labels = samples.label.reindex(ids).to_numpy().astype(np.int64)
    result = train_classifier(tensors["images"], labels, steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                              width=c.width, holdout_fraction=c.holdout_fraction, seed=c.seed, progress=True)
    worst = min(result.per_class, key=result.per_class.get)
    if result.accuracy < c.min_accuracy:
        raise UserError(f"classifier.min_accuracy: the classifier reached {result.accuracy:.3f} on held-out images "
                        f"(worst class {worst}: {result.per_class[worst]:.3f}), below {c.min_accuracy:g}; train it "
                        "longer (classifier.steps) or lower classifier.min_accuracy on purpose")
    summary = {"accuracy": result.accuracy, "per_class": {str(k): v for k, v in result.per_class.items()},
               "holdout_sample_ids": [int(i) for i in np.sort(ids[result.holdout])]}
    with atomic_path(args.out, is_dir=True) as tmp:
        result.model.save_pretrained(tmp)
        (tmp / "classifier.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"classifier: held-out accuracy {result.accuracy:.3f} (worst class {worst}: {result.per_class[worst]:.3f})")


if __name__ == "__main__":
    main()
