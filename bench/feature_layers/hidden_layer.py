"""Issue 12, stop 12: would a hidden layer (HIDDEN ReLU units, dropout DROP on the
bottleneck, momentum 0.9, weight decay 1e-4, LR, 4000 steps of 100) beat retrain.py's
softmax layer on today's bottleneck? Same 10 CV folds as sgd_cv.py, paired against the
plain layer. Run in extract.py's directory.

    python bench/feature_layers/hidden_layer.py HIDDEN:DROP:LR [...]
"""
import os, sys, time
import numpy as np
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
from linear_head import train, accuracy
y = np.load('labels.npy'); X = np.load('feat.npy')[:, 0]
def mlp(x, y, seed, hidden=512, steps=4000, lr=0.01, mom=0.9, drop=0.5, wd=1e-4, batch=100):
    rng = np.random.default_rng(seed); d = x.shape[1]
    W1 = (rng.normal(0, np.sqrt(2 / d), (d, hidden))).astype(np.float32); b1 = np.zeros(hidden, np.float32)
    W2 = rng.normal(0, 0.001, (hidden, 5)).astype(np.float32); b2 = np.zeros(5, np.float32)
    P = [W1, b1, W2, b2]; Vv = [np.zeros_like(p) for p in P]
    by = [np.where(y == c)[0] for c in range(5)]
    for s in range(steps):
        picks = rng.integers(0, 5, batch)
        rows = np.array([by[c][rng.integers(0, len(by[c]))] for c in picks])
        f = x[rows]
        if drop: f = f * (rng.random(f.shape) > drop) / (1 - drop)
        a = f @ W1 + b1; h = np.maximum(a, 0)
        z = h @ W2 + b2; z -= z.max(1, keepdims=True); p = np.exp(z); p /= p.sum(1, keepdims=True)
        p[np.arange(batch), y[rows]] -= 1; g = p / batch
        gW2 = h.T @ g; gb2 = g.sum(0); gh = g @ W2.T; gh[a <= 0] = 0
        gW1 = f.T @ gh; gb1 = gh.sum(0)
        G = [gW1 + wd * W1, gb1, gW2 + wd * W2, gb2]
        for i in range(4):
            Vv[i] = mom * Vv[i] + G[i]; P[i] -= lr * Vv[i]
    return P
def acc(P, x, y):
    W1, b1, W2, b2 = P
    return ((np.maximum(x @ W1 + b1, 0) @ W2 + b2).argmax(1) == y).mean()
splits = []
for repeat in range(2):
    perm = np.random.default_rng(repeat).permutation(len(y))
    for fold, test in enumerate(np.array_split(perm, 5)):
        splits.append((np.setdiff1d(perm, test), test, 10 * repeat + fold))
base = np.array([accuracy(train(X[tr], y[tr], seed), X[te], y[te]) * 100 for tr, te, seed in splits])
print('linear', base.mean().round(2), flush=True)
for cfg in sys.argv[1:]:
    h, drop, lr = cfg.split(':'); t = time.time()
    r = np.array([acc(mlp(X[tr], y[tr], seed, hidden=int(h), drop=float(drop), lr=float(lr)), X[te], y[te]) * 100 for tr, te, seed in splits])
    d = r - base
    print(cfg, r.mean().round(2), 'paired', d.mean().round(2), '+-', (d.std() / 3.16).round(2), (d > 0).sum(), (d < 0).sum(), f'{time.time()-t:.0f}s', flush=True)
