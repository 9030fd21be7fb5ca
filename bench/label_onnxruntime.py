#!/usr/bin/env python3
"""Minimal onnxruntime labeller for a `flowers retrain` graph (the peer a user
would write). Usage: label_onnxruntime.py GRAPH IMAGE... ; prints top-5 `label score`.

A graph of one backbone has one input, described by the `flowers.image_size`,
`flowers.layout`, `flowers.mean`, `flowers.std` and `flowers.resize` entries. A graph of
combined backbones has one input per backbone, each described by its entry of the JSON
list `flowers.inputs` (same fields, plus the input's name): every input gets its own
tensor of the same photo."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageOps

graph, paths = sys.argv[1], sys.argv[2:]
meta = {p.key: p.value for p in onnx.load(graph).metadata_props}
labels = json.loads(meta["flowers.labels"])

opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
if "flowers.inputs" in meta:
    inputs = json.loads(meta["flowers.inputs"])
else:
    keys = ["image_size", "layout", "mean", "std", "resize"]
    inputs = [dict(name=sess.get_inputs()[0].name, **{k: meta["flowers." + k] for k in keys})]


def tensor(img, spec):
    """The photo as the input `spec` describes: resized (after a centre crop, if its
    rule says so) with Pillow's bilinear filter, normalised, in its layout."""
    h, w = (int(v) for v in spec["image_size"].split(","))
    mean = np.array(spec["mean"].split(","), np.float32)
    std = np.array(spec["std"].split(","), np.float32)
    box = None
    if spec["resize"].startswith("center-crop:"):
        side = min(img.size) * float(spec["resize"].split(":")[1])
        l, t = (img.width - side) / 2, (img.height - side) / 2
        box = (l, t, l + side, t + side)
    x = (np.asarray(img.resize((w, h), Image.BILINEAR, box=box), np.float32) - mean) / std
    if spec["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[None]


for path in paths:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    feed = {spec["name"]: tensor(img, spec) for spec in inputs}
    probs = sess.run(["final_result"], feed)[0][0]
    if len(paths) > 1:
        print(path)
    for i in np.argsort(-probs)[:5]:
        print(f"{labels[i]} {probs[i]:.5f}")
