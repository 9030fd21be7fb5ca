#!/usr/bin/env python3
"""Check that flowers' --summaries-dir output loads in TensorBoard's own reader.

Usage: python3 bench/check_tensorboard.py DIR   (needs `pip install tensorboard`)

Loads DIR/train and DIR/validation with EventAccumulator, prints each run's scalar
tags with their (step, value) counts and its histogram tags, and exits non-zero if
DIR/train lacks the `accuracy` and `cross_entropy` scalars or has no histograms.
"""

import os
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

REQUIRED_TRAIN_SCALARS = ("accuracy", "cross_entropy")

# 0 keeps every event instead of sampling.
SIZE_GUIDANCE = {
    ea.COMPRESSED_HISTOGRAMS: 0,
    ea.IMAGES: 0,
    ea.AUDIO: 0,
    ea.SCALARS: 0,
    ea.HISTOGRAMS: 0,
    ea.TENSORS: 0,
}


def load(run_dir):
    """Reads one run; returns {scalar tag: [(step, value)]}, {histogram tag: [(step, num)]}."""
    acc = ea.EventAccumulator(run_dir, size_guidance=SIZE_GUIDANCE)
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags.get(ea.SCALARS, [])
    }
    histograms = {
        tag: [(e.step, e.histogram_value.num) for e in acc.Histograms(tag)]
        for tag in tags.get(ea.HISTOGRAMS, [])
    }
    return scalars, histograms


def report(name, scalars, histograms):
    print(f"{name}:")
    for tag, points in sorted(scalars.items()):
        first, last = points[0], points[-1]
        print(f"  scalar {tag}: {len(points)} (step, value), "
              f"first {first[0]}={first[1]:.4g}, last {last[0]}={last[1]:.4g}")
    for tag, points in sorted(histograms.items()):
        steps = [step for step, _ in points]
        print(f"  histogram {tag}: {len(points)} steps {min(steps)}..{max(steps)}, "
              f"{points[-1][1]:.0f} values at the last")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    problems = []
    for name in ("train", "validation"):
        run_dir = os.path.join(sys.argv[1], name)
        if not os.path.isdir(run_dir):
            print(f"{name}: missing ({run_dir})")
            if name == "train":
                problems.append("no train run")
            continue
        scalars, histograms = load(run_dir)
        report(name, scalars, histograms)
        if name == "train":
            missing = [tag for tag in REQUIRED_TRAIN_SCALARS if not scalars.get(tag)]
            problems += [f"train lacks scalar {tag}" for tag in missing]
            if not histograms:
                problems.append("train has no histograms")
    if problems:
        sys.exit("FAIL: " + "; ".join(problems))
    print("OK")


if __name__ == "__main__":
    main()
