#!/usr/bin/env python3
"""TensorFlow Lite's own interpreter on a .tflite written by flowers: the oracle for
`flowers export --format tflite` (float, int8, float16). Manual checks and benchmarks
only; no test needs Python.

  tflite_oracle.py sample DIR [--count 200] [--every 9]
      prints the deterministic photo sample: every 9th path of DIR's images (*.jpg,
      *.jpeg, *.png, case-insensitive), sorted by their path relative to DIR as Python
      sorts str, starting with the first; the first 200 of those.

  tflite_oracle.py run MODEL.tflite IMAGE... [--tensors OUT.f32] [--mean M --std S
      --size H,W --resize RULE] [--resolver builtin|default|reference]
      prints JSON: the model's size, its input/output tensors, and per image the scores
      (dequantized when the output is int8/uint8) and the top-1 index and label.
      Inputs: with --tensors, the exact float tensors flowers computes (written by
      `cargo run --release --example input_tensors -- GRAPH OUT.f32 IMAGE...`; the images
      are then OUT.f32.txt's); otherwise Pillow decodes and resizes (BILINEAR, the crop box
      of center-crop:F) and normalises with the mean/std of the model's TFLite metadata
      (NormalizationOptions) or the flags. An int8/uint8 input tensor gets the float tensor
      quantized with its own scale and zero point, as an app does.
      --resolver: builtin (default) = TFLite's builtin kernels without the XNNPACK delegate
      (what a phone runs without delegates); default = with XNNPACK; reference = the
      reference kernels (slow; bit-exact definition of the integer ops).

  tflite_oracle.py latency MODEL.tflite [--runs 50] [--warmup 5] [--resolver default]
      one-thread latency of one invocation on a fixed input: JSON with the median and
      the quartiles in milliseconds, and the file size.

Labels: from the metadata's associated labels file (the zip appended to the flatbuffer,
as TFLite Support writes it), if there is one.
"""
import argparse
import io
import json
import os
import statistics
import sys
import time
import zipfile

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def sample(directory, count, every):
    paths = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.relpath(os.path.join(root, name), directory))
    paths.sort()
    return [os.path.join(directory, p) for p in paths[::every][:count]]


def interpreter(model, resolver):
    import tensorflow as tf

    kinds = {
        "builtin": tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        "default": tf.lite.experimental.OpResolverType.AUTO,
        "reference": tf.lite.experimental.OpResolverType.BUILTIN_REF,
    }
    it = tf.lite.Interpreter(
        model_path=model, num_threads=1, experimental_op_resolver_type=kinds[resolver]
    )
    it.allocate_tensors()
    return it


def labels_of(model):
    """The associated files TFLite Support appends as a zip: the first .txt."""
    data = open(model, "rb").read()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                if name.endswith(".txt"):
                    return z.read(name).decode().splitlines()
    except zipfile.BadZipFile:
        pass
    return None


def normalisation_of(model):
    """(mean, std) from the input's NormalizationOptions, if tflite_support reads them."""
    try:
        from tensorflow_lite_support.metadata.python import metadata
    except ImportError:
        return None
    try:
        meta = json.loads(metadata.MetadataDisplayer.with_model_file(model).get_metadata_json())
    except Exception:  # no metadata buffer
        return None
    for unit in meta["subgraph_metadata"][0]["input_tensor_metadata"][0].get("process_units", []):
        if unit.get("options_type") == "NormalizationOptions":
            return unit["options"]["mean"], unit["options"]["std"]
    return None


def pillow_tensor(path, h, w, mean, std, rule):
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    box = None
    if rule.startswith("center-crop:"):
        side = min(img.size) * float(rule.split(":")[1])
        left, top = (img.width - side) / 2, (img.height - side) / 2
        box = (left, top, left + side, top + side)
    rgb = np.asarray(img.resize((w, h), Image.BILINEAR, box=box), np.float32)
    return (rgb - np.float32(mean)) * (np.float32(1) / np.float32(std))


def quantize(x, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(detail["dtype"])


def dequantize(q, detail):
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or scale == 0:
        return q.astype(np.float32)
    return (q.astype(np.float32) - zero) * scale


def tensor_json(detail):
    scale, zero = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape"]],
        "scale": float(scale),
        "zero_point": int(zero),
    }


def run(args):
    it = interpreter(args.model, args.resolver)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    _, h, w, _ = inp["shape"]
    labels = labels_of(args.model)
    if args.tensors:
        images = open(args.tensors + ".txt").read().splitlines()
        tensors = np.fromfile(args.tensors, "<f4").reshape(len(images), h, w, 3)
    else:
        images = args.images
        norm = normalisation_of(args.model)
        mean = args.mean if args.mean is not None else (norm[0] if norm else None)
        std = args.std if args.std is not None else (norm[1] if norm else None)
        if mean is None or std is None:
            sys.exit("tflite_oracle.py: no NormalizationOptions in the model: pass --mean and --std")
        tensors = (pillow_tensor(p, h, w, mean, std, args.resize) for p in images)
    results = []
    for path, x in zip(images, tensors):
        it.set_tensor(inp["index"], quantize(x[None], inp))
        it.invoke()
        scores = dequantize(it.get_tensor(out["index"])[0], out)
        top = int(np.argmax(scores))
        results.append({
            "image": path,
            "scores": [float(s) for s in scores],
            "top1": top,
            "label": labels[top] if labels and top < len(labels) else None,
        })
    print(json.dumps({
        "model": args.model,
        "size_bytes": os.path.getsize(args.model),
        "resolver": args.resolver,
        "input": tensor_json(inp),
        "output": tensor_json(out),
        "labels": labels,
        "results": results,
    }))


def latency(args):
    it = interpreter(args.model, args.resolver)
    inp = it.get_input_details()[0]
    x = np.random.default_rng(0).standard_normal(inp["shape"]).astype(np.float32)
    it.set_tensor(inp["index"], quantize(x, inp))
    for _ in range(args.warmup):
        it.invoke()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - start) * 1000)
    q = statistics.quantiles(times, n=4)
    print(json.dumps({
        "model": args.model,
        "size_bytes": os.path.getsize(args.model),
        "resolver": args.resolver,
        "threads": 1,
        "runs": args.runs,
        "median_ms": statistics.median(times),
        "q1_ms": q[0],
        "q3_ms": q[2],
    }))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("directory")
    s.add_argument("--count", type=int, default=200)
    s.add_argument("--every", type=int, default=9)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("images", nargs="*")
    r.add_argument("--tensors")
    r.add_argument("--mean", type=float)
    r.add_argument("--std", type=float)
    r.add_argument("--resize", default="squash")
    r.add_argument("--resolver", choices=["builtin", "default", "reference"], default="builtin")
    lat = sub.add_parser("latency")
    lat.add_argument("model")
    lat.add_argument("--runs", type=int, default=50)
    lat.add_argument("--warmup", type=int, default=5)
    lat.add_argument("--resolver", choices=["builtin", "default", "reference"], default="default")
    args = ap.parse_args()
    if args.command == "sample":
        print("\n".join(sample(args.directory, args.count, args.every)))
    elif args.command == "run":
        run(args)
    else:
        latency(args)


if __name__ == "__main__":
    main()
