"""Issue 12's feature experiment, step 1: would the final layer gain from features of an
earlier layer? Extracts, for every photo and its left-right mirror, the embedded MobileNet
v1's pooled `features` and the pooled outputs of its last 28x28 and 14x14 pointwise layers
(and a max pool of the last 7x7 one), with onnxruntime on one thread, into .npy files in the
current directory. Step 2 is evalcv.py, step 3 paired.py (BENCHMARKS.md has the results).

    cd WORKDIR && python bench/feature_layers/extract.py [PHOTOS] [MODEL]

Stop 12 added input_size.py, sgd_cv.py and hidden_layer.py (the same features scored with
flowers' SGD layer, larger inputs, a hidden layer).

Preprocessing as bench/reference_extract.py (centre crop 0.875, bilinear, (x-128)/128).
Needs numpy, onnx, onnxruntime, Pillow; evalcv.py also scikit-learn.
"""
import os, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import shape_inference, helper
from PIL import Image, ImageOps
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
from reference_extract import preprocess  # the same preprocessing as the benchmark's peer
IMG = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, '../../../shared/data/flower_photos')
MODEL = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, '../../models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx')
T28, T14, T7 = 'Relu6__25:0', 'Relu6__49:0', 'Relu6__57:0'
m = onnx.load(MODEL)
mi = shape_inference.infer_shapes(m)
vi = {v.name: v for v in mi.graph.value_info}
prod = {o: n for n in m.graph.node for o in n.output}
inits = {i.name: i for i in m.graph.initializer}
# sanity: producers of the chosen Clips are 1x1 group-1 convs (pointwise); T7 feeds the AvgPool
for t in (T28, T14, T7):
    clip = prod[t]; conv = prod[clip.input[0]]
    w = inits.get(conv.input[1]); g = [a.i for a in conv.attribute if a.name == 'group']
    print(t, conv.op_type, conv.name, list(w.dims) if w is not None else None, 'group', g, file=sys.stderr)
print('pooled input:', prod['pooled'].input, file=sys.stderr)
m.graph.output.extend([vi[t] for t in (T28, T14, T7)])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(m.SerializeToString(), opts, providers=['CPUExecutionProvider'])
paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(IMG) for f in fs if f.lower().endswith(('.jpg', '.jpeg', '.png')))
classes = sorted(d for d in os.listdir(IMG) if os.path.isdir(os.path.join(IMG, d)))
labels = np.array([classes.index(os.path.basename(os.path.dirname(p))) for p in paths])
N = len(paths)
feat = np.empty((N, 2, 1024), np.float32); g28 = np.empty((N, 2, 256), np.float32)
g14 = np.empty((N, 2, 512), np.float32); mx7 = np.empty((N, 2, 1024), np.float32)
t0 = time.time(); tinf = 0.0
for i, p in enumerate(paths):
    x = preprocess(p)
    x = np.concatenate([x, x[..., ::-1]], 0).copy()  # original + left-right mirror
    t1 = time.time()
    f, a28, a14, a7 = sess.run(['features', T28, T14, T7], {'input': x})
    tinf += time.time() - t1
    feat[i] = f; g28[i] = a28.mean((2, 3)); g14[i] = a14.mean((2, 3)); mx7[i] = a7.max((2, 3))
    if i == 0:
        print('check features==mean(T7):', np.abs(a7.mean((2, 3)) - f).max(), file=sys.stderr)
    if i % 200 == 0: print(i, time.time() - t0, file=sys.stderr)
tt = time.time() - t0
print(f'{N} images, total {tt:.1f}s = {1000*tt/N:.1f} ms/image (2 views each; inference {1000*tinf/N:.1f} ms/image)', file=sys.stderr)
for k, v in dict(feat=feat, g28=g28, g14=g14, mx7=mx7, labels=labels).items(): np.save(k + '.npy', v)
with open('paths.txt', 'w') as fh: fh.write('\n'.join(paths) + '\n')
