"""Issue 12's feature experiment, step 3: each variant's per-fold accuracy against variant A
(the final features alone), paired fold by fold, at C = 0.1 (from cv_results.npy)."""
import numpy as np
r = np.load('cv_results.npy', allow_pickle=True).item()
a = np.array(r['A  final 1024'][0.1])
for k, v in r.items():
    d = 100*(np.array(v[0.1]) - a)
    print(f'{k:26s} {100*np.mean(v[0.1]):.2f}±{100*np.std(v[0.1]):.2f}  paired diff vs A: {d.mean():+.2f}±{d.std():.2f}  folds better/worse/tie {np.sum(d>0)}/{np.sum(d<0)}/{np.sum(d==0)}')
