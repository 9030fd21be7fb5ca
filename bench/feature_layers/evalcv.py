"""Issue 12's feature experiment, step 2: 5-fold stratified cross-validation, 3 fold seeds,
of a standardised multinomial logistic regression on each feature variant written by
extract.py (run in the same directory). Prints accuracy per variant and C; saves
cv_results.npy for paired.py. Set OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 on a shared
machine.

    python bench/feature_layers/evalcv.py [VARIANT-PREFIX ...]
"""
import sys, time, json, warnings
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.pipeline import make_pipeline
from sklearn.model_selection import StratifiedKFold
warnings.filterwarnings('ignore')
feat, g28, g14, mx7, y = (np.load(k + '.npy') for k in ('feat', 'g28', 'g14', 'mx7', 'labels'))
o = lambda a: a[:, 0]; fl = lambda a: a.mean(1)   # original view / orig+mirror average
def pn(a):  # signed sqrt + L2
    a = np.sign(a) * np.sqrt(np.abs(a)); return a / np.linalg.norm(a, axis=1, keepdims=True)
V = {
 'A  final 1024':            np.hstack([o(feat)]),
 'B  A+GAP14x14x512':        np.hstack([o(feat), o(g14)]),
 'C  A+GAP28x28x256':        np.hstack([o(feat), o(g28)]),
 'D  A flip-avg':            np.hstack([fl(feat)]),
 'E  A sqrt+L2':             pn(o(feat)),
 'F  A+GMP7x7x1024':         np.hstack([o(feat), o(mx7)]),
 'G1 A+14+28':               np.hstack([o(feat), o(g14), o(g28)]),
 'G2 B flip-avg':            np.hstack([fl(feat), fl(g14)]),
 'G3 B sqrt+L2 per block':   np.hstack([pn(o(feat)), pn(o(g14))]),
 'G4 B+C+F flip-avg':        np.hstack([fl(feat), fl(g14), fl(g28), fl(mx7)]),
 'G5 B+C flip-avg sqrtL2':   np.hstack([pn(fl(feat)), pn(fl(g14)), pn(fl(g28))]),
 'G6 D sqrt+L2':             pn(fl(feat)),
}
sel = sys.argv[1:] or list(V)
Cs = [0.1, 1.0, 10.0]
res = {}
for name in V:
    if not any(name.startswith(s) for s in sel): continue
    X = V[name]; t0 = time.time(); acc = {C: [] for C in Cs}
    for seed in (0, 1, 2):
        for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
            for C in Cs:
                clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))
                clf.fit(X[tr], y[tr]); acc[C].append(clf.score(X[te], y[te]))
    res[name] = {C: (np.mean(a), np.std(a), a) for C, a in acc.items()}
    print(f'{name:26s} d={X.shape[1]:4d} ' + '  '.join(f'C={C:<4}: {100*np.mean(a):.2f}±{100*np.std(a):.2f}' for C, a in acc.items()) + f'  ({time.time()-t0:.0f}s)', flush=True)
np.save('cv_results.npy', {k: {C: v[2] for C, v in r.items()} for k, r in res.items()}, allow_pickle=True)
