#!/usr/bin/env python3
"""Where do flowers-vs-onnxruntime probability differences come from?

Usage: bench/preprocess_diff.py GRAPH FLOWERS_BIN IMAGE_DIR [--count 50]

Needs the helper bench/resize-check built first:
  (cd bench/resize-check && CARGO_TARGET_DIR=/tmp/resize-check-target cargo build --release)
and RESIZE_CHECK=/tmp/resize-check-target/release/resize-check (the default).

For the images verify_onnxruntime.py picks (squash graphs only), compares
  decode : image crate (as flowers) vs Pillow, pixel values
  resize : fast_image_resize (as flowers) vs Pillow BILINEAR, from the same decoded pixels
and the max |p - p_flowers| of onnxruntime fed with
  A  Pillow decode + Pillow resize    (what verify_onnxruntime.py / a Python user does)
  B  Pillow decode + flowers' resize
  C  flowers' decode + flowers' resize (should equal flowers up to float noise)
"""
import argparse, json, os, subprocess, sys, tempfile
import numpy as np, onnx, onnxruntime as ort
from PIL import Image, ImageOps
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verify_onnxruntime import pick_images, read_meta, preprocess

ap = argparse.ArgumentParser()
ap.add_argument("graph"); ap.add_argument("flowers_bin"); ap.add_argument("image_dir")
ap.add_argument("--count", type=int, default=50)
args = ap.parse_args()
rc = os.environ.get("RESIZE_CHECK", "/tmp/resize-check-target/release/resize-check")
meta = read_meta(onnx.load(args.graph))
assert meta["resize"] == "squash", "squash graphs only"
labels, H, W = meta["labels"], meta["height"], meta["width"]
images = pick_images(args.image_dir, args.count)
so = ort.SessionOptions(); so.intra_op_num_threads = 2
sess = ort.InferenceSession(args.graph, so, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0].name

def run(rgb_hw3):
    x = (rgb_hw3.astype(np.float32) - meta["mean"]) / meta["std"]
    if meta["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return sess.run(["final_result"], {inp: x[None].astype(np.float32)})[0][0]

out = subprocess.run([args.flowers_bin, "label", "--graph", args.graph, "--json",
                      "--top-k", str(len(labels))] + images, capture_output=True, text=True, check=True)
fl = {}
for line in out.stdout.splitlines():
    o = json.loads(line); s = {d["label"]: d["score"] for d in o["predictions"]}
    fl[o["image"]] = np.array([s[l] for l in labels])

tmp = tempfile.mkdtemp()
dec = dict(max=0, diff=0, n=0, same_size=0); rs = dict(max=0, diff=0, n=0)
pd = {"A": [], "B": [], "C": []}
top1 = {"A": 0, "B": 0, "C": 0}
for p in images:
    pil = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    subprocess.run([rc, "--decode", p, f"{tmp}/d.raw"], check=True)
    raw = open(f"{tmp}/d.raw", "rb").read(); nl = raw.index(b"\n")
    w, h = map(int, raw[:nl].split()); crate = np.frombuffer(raw[nl + 1:], np.uint8).reshape(h, w, 3)
    if crate.shape == pil.shape:
        dec["same_size"] += 1
        d = np.abs(crate.astype(int) - pil.astype(int))
        dec["max"] = max(dec["max"], int(d.max())); dec["diff"] += int((d > 0).sum()); dec["n"] += d.size
    # B: Pillow-decoded pixels resized by fast_image_resize (via lossless PNG)
    Image.fromarray(pil).save(f"{tmp}/p.png")
    subprocess.run([rc, f"{tmp}/p.png", f"{tmp}/b.raw", str(W), str(H)], check=True)
    b = np.fromfile(f"{tmp}/b.raw", np.uint8).reshape(H, W, 3)
    a = np.asarray(Image.fromarray(pil).resize((W, H), Image.BILINEAR))
    d = np.abs(a.astype(int) - b.astype(int))
    rs["max"] = max(rs["max"], int(d.max())); rs["diff"] += int((d > 0).sum()); rs["n"] += d.size
    subprocess.run([rc, p, f"{tmp}/c.raw", str(W), str(H)], check=True)
    c = np.fromfile(f"{tmp}/c.raw", np.uint8).reshape(H, W, 3)
    for k, v in (("A", a), ("B", b), ("C", c)):
        pr = run(v); pd[k].append(float(np.max(np.abs(pr - fl[p]))))
        top1[k] += int(np.argmax(pr) == np.argmax(fl[p]))

print(f"images: {len(images)}")
print(f"decode  image-crate vs Pillow: max |diff| {dec['max']}, {100*dec['diff']/max(dec['n'],1):.2f}% of values differ "
      f"({dec['same_size']} images same size)")
print(f"resize  fast_image_resize vs Pillow BILINEAR: max |diff| {rs['max']}, {100*rs['diff']/rs['n']:.2f}% of values differ")
for k, name in (("A", "Pillow decode + Pillow resize"), ("B", "Pillow decode + fir resize"),
                ("C", "crate decode + fir resize")):
    v = np.array(pd[k])
    print(f"onnxruntime {k} ({name}) vs flowers: top-1 {top1[k]}/{len(images)}, "
          f"max |dp| {v.max():.3g}, median {np.median(v):.3g}")
