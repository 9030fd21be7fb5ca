"""How much can training options and test-time flips add to the final layer? (issue 12)

Reads the embedded backbone's cached bottlenecks of a photo folder and of its mirror image
(both made by flowers), and trains retrain.py's softmax layer with the same mini-batch SGD as
flowers (class-balanced batches of 100, learning rate 0.01) under several options, scoring
each on many held-out photos instead of one 10% test split:

  cv     5-fold cross-validation over every photo, twice with other seeds (10 fits each)
  small  30 photos per class for training, every other photo held out, 6 draws

    python bench/linear_head.py PHOTOS MIRRORED BOTTLENECKS MIRRORED_BOTTLENECKS [cv|small]

MIRRORED is PHOTOS flipped left-right (the script writes it if missing; then run
`flowers extract --image-dir MIRRORED --bottleneck-dir MIRRORED_BOTTLENECKS`).
Needs numpy and Pillow; no TensorFlow.
"""
import hashlib
import math
import os
import sys

import numpy as np

CLASSES = 5
IDENTITY = "2103c5c67317a097"  # the embedded MobileNet v1's cache directory


def mirror(src, dst):
    from PIL import Image, ImageOps

    for cls in sorted(os.listdir(src)):
        if not os.path.isdir(os.path.join(src, cls)):
            continue
        os.makedirs(os.path.join(dst, cls), exist_ok=True)
        for name in os.listdir(os.path.join(src, cls)):
            out = os.path.join(dst, cls, name)
            if not os.path.exists(out):
                image = ImageOps.exif_transpose(Image.open(os.path.join(src, cls, name)))
                image.convert("RGB").transpose(Image.FLIP_LEFT_RIGHT).save(out, quality=95)


def load(root, cache):
    """Bottlenecks (rows), class indices and names of every photo under root."""
    rows, labels, names = [], [], []
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for index, cls in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(root, cls))):
            sha = hashlib.sha256(open(os.path.join(root, cls, name), "rb").read()).hexdigest()
            entry = open(os.path.join(cache, IDENTITY, sha[:2], sha + ".bn"), "rb").read()
            count = int.from_bytes(entry[72:76], "little")
            rows.append(np.frombuffer(entry[76 : 76 + 4 * count], dtype="<f4"))
            labels.append(index)
            names.append(cls + "/" + name)
    return np.array(rows), np.array(labels), names


def train(x, y, seed, steps=4000, lr=0.01, batch=100, momentum=0.0, cosine=False,
          weight_decay=0.0, smoothing=0.0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.001, (x.shape[1], CLASSES)).astype(np.float32)
    b = np.zeros(CLASSES, np.float32)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    by_class = [np.where(y == c)[0] for c in range(CLASSES)]
    for step in range(steps):
        picks = rng.integers(0, CLASSES, batch)
        rows = np.array([by_class[c][rng.integers(0, len(by_class[c]))] for c in picks])
        f = x[rows]
        z = f @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        target = np.full((batch, CLASSES), smoothing / CLASSES, np.float32)
        target[np.arange(batch), y[rows]] += 1 - smoothing
        g = (p - target) / batch
        gw, gb = f.T @ g + weight_decay * w, g.sum(0)
        rate = lr * 0.5 * (1 + math.cos(math.pi * step / steps)) if cosine else lr
        if momentum:
            vw, vb = momentum * vw + gw, momentum * vb + gb
            gw, gb = vw, vb
        w -= rate * gw
        b -= rate * gb
    return w, b


def accuracy(model, x, y):
    w, b = model
    return ((x @ w + b).argmax(1) == y).mean()


OPTIONS = {
    "plain": {},
    "momentum 0.9": {"momentum": 0.9},
    "cosine decay": {"cosine": True},
    "momentum 0.9 + cosine": {"momentum": 0.9, "cosine": True},
    "weight decay 1e-3": {"weight_decay": 1e-3},
    "weight decay 1e-2": {"weight_decay": 1e-2},
    "label smoothing 0.1": {"smoothing": 0.1},
    "500 steps": {"steps": 500},
}


def main():
    photos, mirrored, cache, mirrored_cache = sys.argv[1:5]
    protocol = sys.argv[5] if len(sys.argv) > 5 else "cv"
    mirror(photos, mirrored)
    x, y, names = load(photos, cache)
    xm, ym, names_m = load(mirrored, mirrored_cache)
    assert names == names_m and (y == ym).all()
    splits = []
    if protocol == "cv":
        for repeat in range(2):
            perm = np.random.default_rng(repeat).permutation(len(y))
            for fold, test in enumerate(np.array_split(perm, 5)):
                splits.append((np.setdiff1d(perm, test), test, 10 * repeat + fold))
    else:
        for draw in range(6):
            rng = np.random.default_rng(100 + draw)
            picks = [rng.choice(np.where(y == c)[0], 30, replace=False) for c in range(CLASSES)]
            train_rows = np.concatenate(picks)
            splits.append((train_rows, np.setdiff1d(np.arange(len(y)), train_rows), draw))
    results = {name: [] for name in list(OPTIONS) + ["flip augmentation", "test-time flip"]}
    for train_rows, test, seed in splits:
        for name, options in OPTIONS.items():
            results[name].append(accuracy(train(x[train_rows], y[train_rows], seed, **options),
                                          x[test], y[test]))
        both = np.vstack([x[train_rows], xm[train_rows]])
        model = train(both, np.concatenate([y[train_rows]] * 2), seed)
        results["flip augmentation"].append(accuracy(model, x[test], y[test]))
        model = train(x[train_rows], y[train_rows], seed)
        results["test-time flip"].append(accuracy(model, (x[test] + xm[test]) / 2, y[test]))
    print(f"protocol {protocol}: {len(splits)} fits per row, {len(splits[0][1])} held-out photos each")
    for name, values in results.items():
        values = 100 * np.array(values)
        print(f"{name:24s} {values.mean():6.2f} % +- {values.std() / math.sqrt(len(values)):.2f}")


if __name__ == "__main__":
    main()
