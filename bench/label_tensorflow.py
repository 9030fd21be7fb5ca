#!/usr/bin/env python3
"""label_image.py's computation (TensorFlow 1 graph, tensorflow-for-poets-2's older script),
to check that TensorFlow runs a graph flowers wrote and agrees with `flowers label`.

    pip install tensorflow-cpu numpy
    python bench/label_tensorflow.py --graph retrained_graph.pb --labels retrained_labels.txt \
        --input_layer input --input_height 224 --input_width 224 --input_mean 127.5 \
        --input_std 127.5 --image flower_photos/daisy/21652746_cc379e0eea_m.jpg

Prints the top 5 as `label score`, then flowers' metadata if the graph carries it. Feeds
`--input_layer` (`input`, or `Mul` for Inception) unless `--jpeg` is given, which feeds the
file's bytes to `DecodeJpeg/contents` (Inception graphs keep their own decoding).
"""
import argparse

import numpy as np
import tensorflow.compat.v1 as tf

tf.disable_v2_behavior()

parser = argparse.ArgumentParser()
parser.add_argument("--graph", required=True)
parser.add_argument("--labels", required=True)
parser.add_argument("--image", required=True)
parser.add_argument("--input_layer", default="input")
parser.add_argument("--output_layer", default="final_result")
parser.add_argument("--input_height", type=int, default=224)
parser.add_argument("--input_width", type=int, default=224)
parser.add_argument("--input_mean", type=float, default=128)
parser.add_argument("--input_std", type=float, default=128)
parser.add_argument("--jpeg", action="store_true")
args = parser.parse_args()

graph_def = tf.GraphDef()
with open(args.graph, "rb") as f:
    graph_def.ParseFromString(f.read())
graph = tf.Graph()
with graph.as_default():
    tf.import_graph_def(graph_def)

if args.jpeg:
    feed_name, feed = "import/DecodeJpeg/contents", open(args.image, "rb").read()
else:
    with tf.Graph().as_default(), tf.Session() as session:
        image = tf.image.decode_jpeg(tf.read_file(args.image), channels=3)
        x = tf.expand_dims(tf.cast(image, tf.float32), 0)
        x = tf.image.resize_bilinear(x, [args.input_height, args.input_width])
        feed = session.run(tf.divide(tf.subtract(x, [args.input_mean]), [args.input_std]))
    feed_name = "import/" + args.input_layer
with tf.Session(graph=graph) as session:
    output = graph.get_operation_by_name("import/" + args.output_layer).outputs[0]
    probabilities = np.squeeze(
        session.run(output, {graph.get_operation_by_name(feed_name).outputs[0]: feed})
    )
labels = [line.rstrip("\n") for line in open(args.labels)]
for i in probabilities.argsort()[-5:][::-1]:
    print(labels[i], probabilities[i])
for node in graph_def.node:
    if node.name == "flowers_metadata":
        for entry in node.attr["value"].tensor.string_val:
            print("#", entry.decode())
