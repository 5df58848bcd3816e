"""Embeddings in: a real labelled data set (scikit-learn's bundled `digits`,
64 features, 10 classes; no download) reduced to 8D with the automatic scale."""

import json
import subprocess

import numpy as np
import pytest

import neurograph

sklearn = pytest.importorskip("sklearn", reason="the embedding tests need scikit-learn")
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_digits(return_X_y=True)


def level1_ari(x, y, **kw):
    sim = neurograph.Simulation.from_embeddings(x, labels=y, **kw)
    sim.step(300)
    return sim, sim.summary()


def test_digits_beat_kmeans_with_the_true_class_count(digits):
    x, y = digits
    sim, s = level1_ari(x, y)
    e = sim.embedding
    assert e["rows"] == 1797 and e["dims"] == 64
    assert len(e["explained_variance_ratio"]) == 8
    assert 0.5 < e["explained_variance"] < 1
    assert e["scale"] == e["auto_scale"] > 0
    assert s["labelled_tokens"] == 1797
    # k-means on the same 8D points, told there are 10 classes.
    points = neurograph.Simulation.from_embeddings(x).positions()
    kmeans = adjusted_rand_score(y, KMeans(10, n_init=10, random_state=0).fit_predict(points))
    print(f"digits: level-1 ARI {s['ari_level1']:.3f}, k-means {kmeans:.3f}")
    assert s["ari_level1"] >= kmeans


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_the_outcome_does_not_hang_on_the_input_unit(digits, factor):
    x, y = digits
    _, base = level1_ari(x, y)
    sim, s = level1_ari(x * factor, y)
    assert abs(s["ari_level1"] - base["ari_level1"]) <= 0.05
    assert sim.embedding["auto_scale"] == pytest.approx(
        neurograph.Simulation.from_embeddings(x).embedding["auto_scale"] / factor, rel=1e-9
    )


def test_the_scale_can_be_overridden(digits):
    x, _ = digits
    sim = neurograph.Simulation.from_embeddings(x, scale=0.01)
    e = sim.embedding
    assert e["scale"] == 0.01 and e["auto_scale"] != 0.01
    assert e["knn_target"] == pytest.approx(e["knn_median"] * 0.01)


def test_bad_embeddings_are_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 12))
    with pytest.raises(ValueError, match="7 dimensions; at least 8"):
        neurograph.Simulation.from_embeddings(x[:, :7])
    bad = x.copy()
    bad[4, 9] = np.nan
    with pytest.raises(ValueError, match="row 4, column 9: NaN is not a finite number"):
        neurograph.Simulation.from_embeddings(bad)
    with pytest.raises(ValueError, match="scale = -1"):
        neurograph.Simulation.from_embeddings(x, scale=-1.0)
    with pytest.raises(ValueError, match="labels has 3 rows; X has 50"):
        neurograph.Simulation.from_embeddings(x, labels=[1, 2, 3])
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        neurograph.Simulation.from_embeddings(x, labels=np.full(50, -1))
    with pytest.raises(ValueError, match="duplicates"):
        neurograph.Simulation.from_embeddings(np.ones((20, 10)))
    with pytest.raises(ValueError, match="every value is 0"):
        neurograph.Simulation.from_embeddings(np.zeros((20, 10)))


def test_duplicates_and_extreme_units_are_handled():
    rng = np.random.default_rng(3)
    base = rng.normal(size=(200, 12))
    # Each point 11 times: the duplicates do not count as neighbours.
    dup = np.repeat(base, 11, axis=0)
    assert neurograph.Simulation.from_embeddings(dup).embedding["auto_scale"] > 0
    # A given scale needs no distances at all.
    given = neurograph.Simulation.from_embeddings(np.ones((20, 10)), scale=1.0)
    assert given.embedding["scale"] == 1.0 and given.embedding["auto_scale"] is None
    ref = neurograph.Simulation.from_embeddings(base).positions()
    for unit in (1e300, 1e-300):
        p = neurograph.Simulation.from_embeddings(base * unit).positions()
        assert np.allclose(p, ref, atol=1e-5), unit


def test_groups_alone_are_the_ground_truth(digits):
    x, y = digits
    sim = neurograph.Simulation.from_embeddings(x[:300], groups=y[:300])
    sim.step(5)
    assert sim.summary()["labelled_tokens"] == 300


def test_npy_orders_and_dtypes(tmp_path, cli):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 16, size=(120, 10))
    outs = {}
    for name, arr in {
        "c64": x.astype(np.float64),
        "fortran": np.asfortranarray(x.astype(np.float64)),
        "int32": x.astype(np.int32),
        "uint8": x.astype(np.uint8),
        "float32": x.astype(np.float32),
    }.items():
        np.save(tmp_path / f"{name}.npy", arr)
        subprocess.run(
            [cli, "import", "--input", str(tmp_path / f"{name}.npy"), "--out", str(tmp_path / f"{name}.csv")],
            check=True, capture_output=True, text=True,
        )
        outs[name] = np.loadtxt(tmp_path / f"{name}.csv", delimiter=",", skiprows=1)
    for name, pts in outs.items():
        assert np.allclose(pts, outs["c64"], atol=1e-5), name
    np.save(tmp_path / "f16.npy", x.astype(np.float16))
    r = subprocess.run(
        [cli, "import", "--input", str(tmp_path / "f16.npy"), "--out", str(tmp_path / "f16.csv")],
        capture_output=True, text=True,
    )
    assert r.returncode != 0 and "not supported" in r.stderr


def test_cli_import_of_a_labelled_csv(tmp_path, cli, digits):
    x, y = digits
    x, y = x[:400], y[:400]
    with open(tmp_path / "d.csv", "w") as f:
        f.write(",".join(f"f{i}" for i in range(64)) + ",label\n")
        for row, label in zip(x, y):
            f.write(",".join(str(v) for v in row) + f",digit-{label}\n")
    subprocess.run(
        [cli, "import", "--input", str(tmp_path / "d.csv"), "--out", str(tmp_path / "t.csv")],
        check=True, capture_output=True, text=True,
    )
    sim = neurograph.Simulation.from_csv(str(tmp_path / "t.csv"))
    direct = neurograph.Simulation.from_embeddings(x, labels=y)
    assert np.allclose(sim.positions(), direct.positions(), atol=1e-6)
    sim.step(5)
    assert sim.summary()["labelled_tokens"] == 400
    # A file without a header is refused, not read one row short.
    with open(tmp_path / "bare.csv", "w") as f:
        for row in x[:20]:
            f.write(",".join(str(v) for v in row) + "\n")
    r = subprocess.run(
        [cli, "import", "--input", str(tmp_path / "bare.csv"), "--out", str(tmp_path / "b.csv")],
        capture_output=True, text=True,
    )
    assert r.returncode != 0 and "header" in r.stderr


def test_cli_import_gives_the_same_world(digits, tmp_path, cli):
    x, y = digits
    np.save(tmp_path / "digits.npy", x)
    out = subprocess.run(
        [cli, "import", "--input", str(tmp_path / "digits.npy"), "--out", str(tmp_path / "t.csv"), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    report = json.loads(out)
    sim = neurograph.Simulation.from_embeddings(x)
    assert report["scale"] == pytest.approx(sim.embedding["scale"], rel=1e-12)
    from_csv = neurograph.Simulation.from_csv(str(tmp_path / "t.csv"))
    assert np.allclose(from_csv.positions(), sim.positions(), atol=1e-6)
