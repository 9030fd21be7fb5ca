"""Issue 12, stop 12: how does the final layer's accuracy grow with the number of training
photos? Today's bottleneck (extract.py's feat.npy), retrain.py's SGD layer, the same 10 CV
folds as sgd_cv.py, training on a class-stratified fraction of each training fold; the
held-out folds stay whole. Run in extract.py's directory.

    python bench/feature_layers/learning_curve.py
"""
import os, sys
import numpy as np
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
from linear_head import train, accuracy
y = np.load('labels.npy'); X = np.load('feat.npy')[:, 0]
folds = []
for repeat in range(2):
    perm = np.random.default_rng(repeat).permutation(len(y))
    for k, test in enumerate(np.array_split(perm, 5)):
        folds.append((np.setdiff1d(perm, test), test, 10 * repeat + k))
for fraction in (0.125, 0.25, 0.5, 0.75, 1.0):
    accs, sizes = [], []
    for a, b, seed in folds:
        rng = np.random.default_rng(seed)
        keep = np.concatenate([rng.permutation(a[y[a] == c])[:max(1, round(fraction * (y[a] == c).sum()))]
                               for c in range(5)])
        accs.append(accuracy(train(X[keep], y[keep], seed), X[b], y[b]) * 100); sizes.append(len(keep))
    accs = np.array(accs)
    print(f'{np.mean(sizes):6.0f} training photos: {accs.mean():.2f} +- {accs.std() / np.sqrt(len(accs)):.2f}', flush=True)
