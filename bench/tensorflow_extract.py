#!/usr/bin/env python3
"""The peer of `flowers extract --architecture mobilenet_*`: TensorFlow 2 (pip, through
tf.compat.v1) running retrain.py's frozen MobileNet graph over a folder of photos, the way
a user of retrain.py's graphs would write it: Pillow decode, squash-resize to the graph's
input size (bilinear, as retrain.py's readers resize without keeping the aspect ratio),
(pixel - 127.5) / 127.5, batch 1. With --threads 2, two Python threads each run their own
session (one intra-op thread each) over half of the photos; --threads 1 is one session on
one thread, for per-image figures.

Usage: tensorflow_extract.py ARCHIVE.tgz|frozen_graph.pb IMAGE_DIR
           [--threads N] [--output TENSOR] [--save OUT.npy] [--size N]

Prints to stdout one line: `images N seconds S per_image_ms M cpu_seconds C`, S (wall) and C
(CPU time of the whole process over that span, every thread) timed from the first photo
read to the last bottleneck: TensorFlow's import and the graph load excluded; the whole
process is what bench/tensorflow_ab.sh times.
"""
import argparse
import os
import re
import tarfile
import threading
import time

import numpy as np
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402  (after the log level is set)


def frozen_graph(path):
    """The frozen_graph.pb bytes, from the archive retrain.py downloads or a .pb file."""
    if not path.endswith((".tgz", ".tar.gz")):
        with open(path, "rb") as f:
            return f.read()
    with tarfile.open(path) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("frozen_graph.pb"))
        return archive.extractfile(member).read()


def photos(image_dir):
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(image_dir)
        for f in files
        if f.lower().endswith((".jpg", ".jpeg"))
    )


def preprocess(path, size):
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    return ((np.asarray(img, np.float32) - 127.5) / 127.5)[None]


def run(graph_def, paths, size, output, out, rows):
    """One session on this thread over `paths`; bottlenecks go to `out[rows]`."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1
    )
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        tensor = graph.get_tensor_by_name(output)
        for row, path in zip(rows, paths):
            out[row] = sess.run(tensor, {"input:0": preprocess(path, size)}).reshape(-1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("graph")
    parser.add_argument("image_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="MobilenetV1/Logits/AvgPool_1a/AvgPool:0")
    parser.add_argument("--save")
    parser.add_argument("--size", type=int, help="input side (default: from the file name)")
    args = parser.parse_args()

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen_graph(args.graph))
    # mobilenet_v1_0.25_224 -> 224: the size in the archive's (or folder's) name.
    named = re.search(r"_(\d+)(?:_frozen|/|\.tgz|$)", args.graph)
    size = args.size or int(named.group(1))
    paths = photos(args.image_dir)
    shape = tf.Graph()
    with shape.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
        length = int(np.prod(shape.get_tensor_by_name(args.output).shape.as_list()[1:]))
    out = np.empty((len(paths), length), np.float32)

    start, cpu = time.perf_counter(), time.process_time()
    workers = [
        threading.Thread(
            target=run,
            args=(graph_def, paths[t :: args.threads], size, args.output, out,
                  range(t, len(paths), args.threads)),
        )
        for t in range(args.threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if args.save:
        np.save(args.save, out)
    per_image = 1000 * seconds / len(paths)
    print(f"images {len(paths)} seconds {seconds:.3f} per_image_ms {per_image:.3f} cpu_seconds {cpu:.3f}")


if __name__ == "__main__":
    main()
