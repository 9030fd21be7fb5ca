"""Issue 12, stop 12: are the embedded backbone's features better at a larger input size?
Extracts `features` of every photo (paths.txt written by extract.py) at SIZE x SIZE, the
centred CROP square resized bilinearly, with the 7x7 AveragePool turned into a
GlobalAveragePool so any size runs; onnxruntime, one thread. Writes feat_SIZE_CROP.npy in
the current directory; score with sgd_cv.py.

    cd WORKDIR && python bench/feature_layers/input_size.py SIZE CROP [MODEL]
"""
import os, sys, time
import numpy as np, onnx, onnxruntime as ort
from onnx import helper
from PIL import Image, ImageOps
HERE = os.path.dirname(os.path.abspath(__file__))
S, CROP = int(sys.argv[1]), float(sys.argv[2])
MODEL = sys.argv[3] if len(sys.argv) > 3 else os.path.join(HERE, '../../models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx')
m = onnx.load(MODEL)
d = m.graph.input[0].type.tensor_type.shape.dim
d[2].dim_param, d[3].dim_param = 'H', 'W'
for n in m.graph.node:
    if n.op_type == 'AveragePool':
        n.op_type = 'GlobalAveragePool'
        del n.attribute[:]
del m.graph.output[:]
m.graph.output.extend([helper.make_tensor_value_info('features', onnx.TensorProto.FLOAT, None)])
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
sess = ort.InferenceSession(m.SerializeToString(), opts, providers=['CPUExecutionProvider'])
paths = open('paths.txt').read().split()
out = np.empty((len(paths), 1024), np.float32); t0 = time.time()
for i, p in enumerate(paths):
    img = ImageOps.exif_transpose(Image.open(p)).convert('RGB')
    w, h = img.size; side = min(w, h) * CROP; l, t = (w - side) / 2, (h - side) / 2
    img = img.resize((S, S), Image.BILINEAR, box=(l, t, l + side, t + side))
    x = ((np.asarray(img, np.float32) - 128) / 128).transpose(2, 0, 1)[None].copy()
    out[i] = sess.run(['features'], {'input': x})[0][0]
np.save(f'feat_{S}_{CROP}.npy', out)
print(f'{len(paths)} photos at {S}x{S} in {time.time() - t0:.0f} s', file=sys.stderr)
