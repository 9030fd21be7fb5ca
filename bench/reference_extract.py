#!/usr/bin/env python3
"""Reference bottleneck extraction a user would write instead of flowers:
Pillow decode + EXIF transpose + RGB + flowers' default resize rule (the centred 87.5%
square, bilinear to 224x224),
(pixel - 128) / 128, NCHW, onnxruntime (2 intra-op threads) on the same
MobileNet v1 ONNX backbone, output `features` [N, 1024] for every image.

Usage: reference_extract.py MODEL.onnx IMAGE_DIR [OUT.npy]
"""
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

def preprocess(path):
    """One image as the backbone's input: a [1, 3, 224, 224] float32 array."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    side = min(img.size) * 0.875
    left, top = (img.width - side) / 2, (img.height - side) / 2
    img = img.resize((224, 224), Image.BILINEAR, box=(left, top, left + side, top + side))
    return ((np.asarray(img, np.float32) - 128.0) / 128.0).transpose(2, 0, 1)[None]


def main():
    model, image_dir = sys.argv[1], sys.argv[2]
    out = sys.argv[3] if len(sys.argv) > 3 else None

    paths = sorted(os.path.join(root, f)
                   for root, _, files in os.walk(image_dir)
                   for f in files if f.lower().endswith((".jpg", ".jpeg", ".png")))

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    feats = np.empty((len(paths), 1024), np.float32)
    for i, p in enumerate(paths):
        feats[i] = sess.run(["features"], {"input": preprocess(p)})[0].reshape(-1)
    if out:
        np.save(out, feats)
    print(f"{len(paths)} images -> features {feats.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
