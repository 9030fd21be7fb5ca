"""Issue 12, stop 12: the feature variants of extract.py and input_size.py scored with
flowers' own final layer instead of a logistic regression: retrain.py's SGD (balanced
batches of 100, learning rate 0.01, 4000 steps; bench/linear_head.py's `train`), 5-fold CV
twice (10 fits, 364 held-out photos each), paired against today's bottleneck, and on
retrain.py's fixed hash split (seeds 1-5). Run in extract.py's directory.

    python bench/feature_layers/sgd_cv.py [feat_SIZE_CROP ...]
"""
import hashlib, os, re, sys
import numpy as np
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
from linear_head import train, accuracy
y = np.load('labels.npy'); feat, g14 = np.load('feat.npy'), np.load('g14.npy')
V = {'features (today)': feat[:, 0], '+ mean of 14x14 layer': np.hstack([feat[:, 0], g14[:, 0]])}
for name in sys.argv[1:]:
    V[name] = np.load(name + '.npy')
def split(path):  # retrain.py's hash split of CLASS/NAME, 10 % validation, 10 % test
    name = re.sub(r'_nohash_.*$', '', '/'.join(path.split('/')[-2:]))
    v = (int(hashlib.sha1(name.encode()).hexdigest(), 16) % 2**27) * (100.0 / (2**27 - 1))
    return 1 if v < 10 else (2 if v < 20 else 0)
s = np.array([split(p) for p in open('paths.txt').read().split()])
folds = []
for repeat in range(2):
    perm = np.random.default_rng(repeat).permutation(len(y))
    for k, test in enumerate(np.array_split(perm, 5)):
        folds.append((np.setdiff1d(perm, test), test, 10 * repeat + k))
base = None
for name, X in V.items():
    cv = np.array([accuracy(train(X[a], y[a], seed), X[b], y[b]) * 100 for a, b, seed in folds])
    fixed = [accuracy(train(X[s == 0], y[s == 0], seed), X[s == 2], y[s == 2]) * 100 for seed in range(1, 6)]
    base = cv if base is None else base
    d = cv - base
    print(f'{name:24s} CV {cv.mean():.2f} +- {cv.std() / np.sqrt(len(cv)):.2f}  paired {d.mean():+.2f} +- '
          f'{d.std() / np.sqrt(len(d)):.2f} ({(d > 0).sum()}/{(d < 0).sum()})  fixed split {np.mean(fixed):.2f}', flush=True)
