"""Per-image inference time of an ONNX backbone in onnxruntime on one thread (issue 13's
peer for `cargo run --release --example backbone_speed -- RUNS --model PATH`).

    python bench/onnxruntime_one_thread.py MODEL.onnx [RUNS]

Random input of the model's shape (a free batch dimension is 1), 5 warm-up runs, then the
median of RUNS (default 30). Needs numpy and onnxruntime.
"""
import sys, time, numpy as np, onnxruntime as ort
path = sys.argv[1]; runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
shape = [1 if not isinstance(d, int) else d for d in inp.shape]
x = np.random.default_rng(0).random(shape, dtype=np.float32)
for _ in range(5): s.run(None, {inp.name: x})
t = []
for _ in range(runs):
    a = time.perf_counter(); s.run(None, {inp.name: x}); t.append(time.perf_counter() - a)
print(f"{path.split('/')[-1]} onnxruntime 1 thread: median {1000*np.median(t):.2f} ms")
