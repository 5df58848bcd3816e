#!/usr/bin/env python3
"""HDBSCAN on the same initial points, scored like `neurograph run --json`.

    neurograph generate --scenario clusters --tokens 10000 --seed 42 --out points.csv
    pip install hdbscan            # or scikit-learn >= 1.3 (sklearn.cluster.HDBSCAN)
    python3 examples/hdbscan_baseline.py points.csv

Level 1 is HDBSCAN with leaf cluster selection and `min_cluster_size` 10 (the best
of 10/25/50/100/200 × eom/leaf on the default scenario) scored against the `label`
column; level 2 is HDBSCAN with excess-of-mass selection and `min_cluster_size` 600
scored against `group` (with 100, excess of mass picks the 20 well-separated
subgroups instead of the 4 groups). Noise
points count as clusters of their own, as NeuroGraph scores ungrouped tokens;
the ARI over the clustered points only is printed too. The last line is JSON.
Not used by the tests.
"""

import argparse
import csv
import json
import sys
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score


def cluster(points, min_cluster_size, selection):
    try:
        import hdbscan

        model = hdbscan.HDBSCAN(
            min_cluster_size=min_cluster_size, cluster_selection_method=selection
        )
        name = "hdbscan " + getattr(hdbscan, "__version__", "")
    except ImportError:
        from sklearn.cluster import HDBSCAN

        model = HDBSCAN(min_cluster_size=min_cluster_size, cluster_selection_method=selection)
        name = "sklearn.cluster.HDBSCAN"
    return model.fit_predict(points), name.strip()


def with_noise_as_singletons(labels):
    out = labels.copy()
    noise = np.flatnonzero(labels < 0)
    out[noise] = labels.max() + 1 + np.arange(len(noise))
    return out


def score(pred, truth):
    clustered = pred >= 0
    return {
        "ari": adjusted_rand_score(truth, with_noise_as_singletons(pred)),
        "ari_clustered_only": adjusted_rand_score(truth[clustered], pred[clustered]),
        "clusters": int(pred.max() + 1),
        "noise": int((~clustered).sum()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--min-cluster-size-1", type=int, default=10)
    ap.add_argument("--selection-1", choices=["eom", "leaf"], default="leaf")
    ap.add_argument("--min-cluster-size-2", type=int, default=600)
    ap.add_argument("--selection-2", choices=["eom", "leaf"], default="eom")
    args = ap.parse_args()
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "label" not in rows[0] or "group" not in rows[0]:
        sys.exit(f"{args.csv}: need x0..x7, label and group columns (neurograph generate)")
    points = np.array([[float(r[f"x{k}"]) for k in range(8)] for r in rows])
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    t = time.perf_counter()
    l1, name = cluster(points, args.min_cluster_size_1, args.selection_1)
    l2, _ = cluster(points, args.min_cluster_size_2, args.selection_2)
    seconds = time.perf_counter() - t
    s1, s2 = score(l1, labels), score(l2, groups)
    print(f"{name} on {len(points)} points ({seconds:.2f} s for both levels)")
    print(f"  level 1 ({args.selection_1}, min_cluster_size {args.min_cluster_size_1}): {s1}")
    print(f"  level 2 ({args.selection_2}, min_cluster_size {args.min_cluster_size_2}): {s2}")
    print(
        json.dumps(
            {
                "method": name,
                "points": len(points),
                "ari_level1": s1["ari"],
                "ari_level2": s2["ari"],
                "level1": s1,
                "level2": s2,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
