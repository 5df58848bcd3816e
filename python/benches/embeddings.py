"""Embeddings in, beside k-means and HDBSCAN, on scikit-learn's bundled data sets.

    python3 python/benches/embeddings.py [--ticks 300]

For `digits` (64 features, 10 classes), `wine` (13) and `breast_cancer` (30)
(the last two standardised): the level-1 ARI of `Simulation.from_embeddings` with
the automatic scale after `--ticks` ticks, with the input multiplied by 1, 0.5
and 2, and beside it k-means given the true class count (`n_init=10`) and
HDBSCAN (defaults) on the same 8D points. Not part of the test suite.
"""

import argparse
import warnings

import numpy as np
from sklearn import datasets
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.preprocessing import StandardScaler

import neurograph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=300)
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    print("data set        N x D      ARI x1  x0.5    x2  groups  k-means  HDBSCAN  explained")
    for name in ["digits", "wine", "breast_cancer"]:
        x, y = getattr(datasets, "load_" + name)(return_X_y=True)
        if name != "digits":
            x = StandardScaler().fit_transform(x)
        aris = []
        groups = None
        for factor in (1.0, 0.5, 2.0):
            sim = neurograph.Simulation.from_embeddings(x * factor, labels=y)
            sim.step(a.ticks)
            s = sim.summary()
            aris.append(s["ari_level1"])
            groups = groups or s["groups_per_level"][0]
        base = neurograph.Simulation.from_embeddings(x)
        p = base.positions()
        k = len(np.unique(y))
        km = adjusted_rand_score(y, KMeans(k, n_init=10, random_state=0).fit_predict(p))
        hd = adjusted_rand_score(y, HDBSCAN().fit_predict(p))
        shape = f"{x.shape[0]} x {x.shape[1]}"
        print(
            f"{name:14s} {shape:>10s}   {aris[0]:.3f} {aris[1]:.3f} {aris[2]:.3f}  {groups:6d}  "
            f"{km:7.3f}  {hd:7.3f}  {base.embedding['explained_variance']:.3f}"
        )


if __name__ == "__main__":
    main()
