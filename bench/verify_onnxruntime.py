#!/usr/bin/env python3
"""Cross-check a graph written by `flowers retrain` against onnxruntime.

Usage: bench/verify_onnxruntime.py GRAPH FLOWERS_BIN IMAGE_DIR [--count 50]

1. Loads GRAPH with `onnx` and runs onnx.checker.check_model(full_check=True).
2. Reads the preprocessing from the graph's metadata_props (flowers.*).
3. Picks --count images deterministically (sorted class folders, sorted files,
   evenly spaced within each class, spread over the classes).
4. Feeds each through onnxruntime, preprocessing in numpy/Pillow exactly as the
   metadata says: EXIF transpose, RGB, resize (squash | center-crop:F) with
   Pillow BILINEAR, (rgb - mean) / std, NCHW or NHWC.
5. Runs `FLOWERS_BIN label --graph GRAPH --json --top-k <all> <images>` once.
6. Compares top-1 per image and the max absolute probability difference.

Exits non-zero if the checker fails or any top-1 differs.
Needs: pip install onnx onnxruntime pillow numpy
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_meta(model):
    meta = {p.key: p.value for p in model.metadata_props}
    required = ["flowers.labels", "flowers.image_size", "flowers.layout",
                "flowers.mean", "flowers.std", "flowers.resize"]
    missing = [k for k in required if k not in meta]
    if missing:
        raise SystemExit(f"graph lacks metadata: {', '.join(missing)}")
    h, w = (int(v) for v in meta["flowers.image_size"].split(","))
    return {
        "labels": json.loads(meta["flowers.labels"]),
        "height": h,
        "width": w,
        "layout": meta["flowers.layout"],
        "mean": np.array([float(v) for v in meta["flowers.mean"].split(",")], np.float32),
        "std": np.array([float(v) for v in meta["flowers.std"].split(",")], np.float32),
        "resize": meta["flowers.resize"],
        "backbone": meta.get("flowers.backbone", "?"),
    }


def preprocess(path, meta):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    size = (meta["width"], meta["height"])
    rule = meta["resize"]
    if rule == "squash":
        img = img.resize(size, Image.BILINEAR)
    elif rule.startswith("center-crop:"):
        f = float(rule.split(":", 1)[1])
        w, h = img.size
        side = min(w, h) * f
        left, top = (w - side) / 2.0, (h - side) / 2.0
        img = img.resize(size, Image.BILINEAR, box=(left, top, left + side, top + side))
    else:
        raise SystemExit(f"unknown flowers.resize {rule!r}")
    x = (np.asarray(img, np.float32) - meta["mean"]) / meta["std"]  # H,W,3
    if meta["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    elif meta["layout"] != "NHWC":
        raise SystemExit(f"unknown flowers.layout {meta['layout']!r}")
    return x[np.newaxis].astype(np.float32)


def pick_images(image_dir, count):
    classes = sorted(d for d in os.listdir(image_dir)
                     if os.path.isdir(os.path.join(image_dir, d)))
    files = {c: sorted(os.path.join(image_dir, c, f)
                       for f in os.listdir(os.path.join(image_dir, c))
                       if f.lower().endswith(IMAGE_EXTS))
             for c in classes}
    classes = [c for c in classes if files[c]]
    # quotas: one image per class in turn until `count` (or every image) is taken
    quota = {c: 0 for c in classes}
    left = min(count, sum(len(files[c]) for c in classes))
    while left:
        for c in classes:
            if left and quota[c] < len(files[c]):
                quota[c] += 1
                left -= 1
    picked = []
    for c in classes:
        n = quota[c]
        # evenly spaced over the sorted folder
        idx = sorted({int(k * len(files[c]) / n) for k in range(n)}) if n else []
        picked += [files[c][k] for k in idx]
    return picked


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graph")
    ap.add_argument("flowers_bin")
    ap.add_argument("image_dir")
    ap.add_argument("--count", type=int, default=50)
    args = ap.parse_args()

    ok = True
    model = onnx.load(args.graph)
    try:
        onnx.checker.check_model(model, full_check=True)
        print("onnx.checker (full_check=True): OK")
    except Exception as e:  # noqa: BLE001
        print(f"onnx.checker (full_check=True): FAILED: {e}")
        ok = False
    meta = read_meta(model)
    labels = meta["labels"]
    print(f"metadata: labels={labels} size={meta['height']}x{meta['width']} "
          f"layout={meta['layout']} mean={meta['mean'].tolist()} std={meta['std'].tolist()} "
          f"resize={meta['resize']} backbone={meta['backbone']}")

    images = pick_images(args.image_dir, args.count)
    print(f"images: {len(images)} from {args.image_dir}")

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(args.graph, opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    out_name = "final_result" if "final_result" in out_names else out_names[0]
    ort_probs = {}
    for p in images:
        ort_probs[p] = sess.run([out_name], {in_name: preprocess(p, meta)})[0][0]

    cmd = [args.flowers_bin, "label", "--graph", args.graph, "--json",
           "--top-k", str(len(labels))] + images
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"flowers label failed ({res.returncode}):\n{res.stderr}")
        return 1
    fl_probs = {}
    for line in res.stdout.splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        scores = {d["label"]: d["score"] for d in obj["predictions"]}
        fl_probs[obj["image"]] = np.array([scores[l] for l in labels], np.float64)

    agree, max_diff, worst = 0, 0.0, None
    missing = [p for p in images if p not in fl_probs]
    for p in images:
        if p not in fl_probs:
            continue
        a, b = ort_probs[p], fl_probs[p]
        d = float(np.max(np.abs(a - b)))
        if d > max_diff:
            max_diff, worst = d, p
        if int(np.argmax(a)) == int(np.argmax(b)):
            agree += 1
        else:
            print(f"TOP-1 DIFFERS: {p}: onnxruntime={labels[int(np.argmax(a))]} "
                  f"({a.max():.4f}) flowers={labels[int(np.argmax(b))]} ({b.max():.4f})")
    if missing:
        print(f"flowers gave no result for {len(missing)} images, e.g. {missing[0]}")
        ok = False
    print(f"top-1 agreement: {agree}/{len(images)}")
    print(f"max |p_flowers - p_onnxruntime|: {max_diff:.3g}" + (f" ({worst})" if worst else ""))
    if agree != len(images):
        ok = False
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
