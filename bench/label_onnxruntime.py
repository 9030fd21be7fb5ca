#!/usr/bin/env python3
"""Minimal onnxruntime labeller for a `flowers retrain` graph (the peer a user
would write). Usage: label_onnxruntime.py GRAPH IMAGE... ; prints top-5 `label score`."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image, ImageOps

graph, paths = sys.argv[1], sys.argv[2:]
meta = {p.key: p.value for p in onnx.load(graph).metadata_props}
labels = json.loads(meta["flowers.labels"])
h, w = (int(v) for v in meta["flowers.image_size"].split(","))
mean = np.array(meta["flowers.mean"].split(","), np.float32)
std = np.array(meta["flowers.std"].split(","), np.float32)
rule = meta["flowers.resize"]

opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name

for path in paths:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    box = None
    if rule.startswith("center-crop:"):
        side = min(img.size) * float(rule.split(":")[1])
        l, t = (img.width - side) / 2, (img.height - side) / 2
        box = (l, t, l + side, t + side)
    x = (np.asarray(img.resize((w, h), Image.BILINEAR, box=box), np.float32) - mean) / std
    if meta["flowers.layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    probs = sess.run(["final_result"], {inp: x[None]})[0][0]
    if len(paths) > 1:
        print(path)
    for i in np.argsort(-probs)[:5]:
        print(f"{labels[i]} {probs[i]:.5f}")
