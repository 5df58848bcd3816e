"""The Python API against the engine: arrays out and in, commands, errors,
the GIL, determinism against the CLI, and the WAL."""

import json
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

import neurograph


def small(**kw):
    kw.setdefault("scenario", "clusters")
    kw.setdefault("tokens", 600)
    kw.setdefault("seed", 7)
    return neurograph.Simulation(**kw)


def test_arrays_have_the_documented_shapes_and_dtypes():
    sim = small()
    sim.step(5)
    n = len(sim)
    assert n == 600
    assert sim.tick == 5
    ids = sim.ids()
    assert ids.dtype == np.uint64 and ids.shape == (n,)
    assert np.all(np.diff(ids.astype(np.int64)) > 0), "ids are increasing"
    for name in ("positions", "velocities"):
        a = getattr(sim, name)()
        assert a.dtype == np.float32 and a.shape == (n, 8), name
        assert np.isfinite(a).all()
    for name in ("charges", "masses", "radii", "strengths"):
        a = getattr(sim, name)()
        assert a.dtype == np.float32 and a.shape == (n,), name
    pairs, weights = sim.links()
    assert pairs.dtype == np.uint64 and pairs.shape == (len(weights), 2)
    assert weights.dtype == np.float32
    assert len(sim.digest) == 16


def test_spawned_values_round_trip_in_id_order():
    sim = small(tokens=10)
    rng = np.random.default_rng(1)
    pos = rng.uniform(-2, 2, (50, 8))  # float64: converted to float32
    charges = rng.uniform(-1, 1, 50)
    masses = rng.uniform(0.5, 2, 50)
    radii = np.full(50, 1.0)
    strengths = rng.uniform(0.1, 1, 50)
    ids = sim.spawn_batch(pos, charges=charges, masses=masses, radii=radii, strengths=strengths)
    assert ids.dtype == np.uint64 and list(ids) == list(range(10, 60))
    all_ids = sim.ids()
    rows = np.searchsorted(all_ids, ids)
    assert np.array_equal(sim.positions()[rows], pos.astype(np.float32))
    assert np.array_equal(sim.charges()[rows], charges.astype(np.float32))
    assert np.array_equal(sim.masses()[rows], masses.astype(np.float32))
    assert np.array_equal(sim.radii()[rows], radii.astype(np.float32))
    assert np.array_equal(sim.strengths()[rows], strengths.astype(np.float32))
    # Defaults: charge, mass, radius and strength 1.
    (one,) = sim.spawn_batch(np.zeros((1, 8), np.float32))
    row = np.searchsorted(sim.ids(), one)
    assert sim.charges()[row] == 1 and sim.masses()[row] == 1
    assert sim.radii()[row] == 1 and sim.strengths()[row] == 1


def test_rows_follow_ids_after_a_despawn():
    sim = small(tokens=20)
    before = sim.positions()
    sim.despawn(3)
    ids = sim.ids()
    assert 3 not in ids and len(ids) == 19
    after = sim.positions()
    assert np.array_equal(after, np.delete(before, 3, axis=0))


def test_commands_change_the_world():
    sim = small(tokens=20)
    sim.link(0, 1, weight=0.8, rest_length=0.3)
    pairs, weights = sim.links()
    assert [0, 1] in pairs.tolist()
    assert weights[pairs.tolist().index([0, 1])] == pytest.approx(0.8)
    sim.set(2, "charge", -0.5)
    assert sim.charges()[2] == pytest.approx(-0.5)
    sim.set(2, "position", [0.5] * 8)
    assert np.allclose(sim.positions()[2], 0.5)
    v0 = sim.velocities()[4].copy()
    m = sim.masses()[4]
    sim.impulse(4, [1, 0, 0, 0, 0, 0, 0, 0])
    assert sim.velocities()[4][0] == pytest.approx(v0[0] + 1 / m, rel=1e-5)


def test_bad_input_is_refused_with_the_row_field_value_and_limit():
    sim = small(tokens=10)
    digest = sim.digest
    pos = np.zeros((5, 8), np.float32)
    charges = np.zeros(5, np.float32)
    charges[3] = np.nan
    with pytest.raises(ValueError, match=r"row 3: charge = NaN: must be a finite number in \[-1, 1\]"):
        sim.spawn_batch(pos, charges=charges)
    masses = np.ones(5)
    masses[4] = -2
    with pytest.raises(ValueError, match=r"row 4: mass = -2"):
        sim.spawn_batch(pos, masses=masses)
    with pytest.raises(ValueError, match=r"shape \(5, 7\)"):
        sim.spawn_batch(np.zeros((5, 7)))
    with pytest.raises(ValueError, match="charges has 4 rows; positions has 5"):
        sim.spawn_batch(pos, charges=np.zeros(4))
    with pytest.raises(KeyError, match="unknown token #999"):
        sim.link(0, 999)
    with pytest.raises(ValueError, match="unknown field"):
        sim.set(0, "colour", 1)
    with pytest.raises(ValueError, match="8 components"):
        sim.impulse(0, [1, 2, 3])
    # Nothing changed.
    assert len(sim) == 10 and sim.digest == digest


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="no-such"):
        neurograph.Simulation(scenario="no-such")
    with pytest.raises(ValueError, match="unknown field"):
        neurograph.Simulation(config={"sim": {"no_such_key": 1}})
    with pytest.raises(ValueError, match="tokens"):
        neurograph.Simulation(tokens=0)
    with pytest.raises(ValueError):
        neurograph.Simulation(cdna="no-such-profile.toml")


def test_config_dict_and_cdna_profile_are_used():
    sim = small(config={"sim": {"dt": 0.01}}, cdna="explorer")
    s = sim.summary()
    assert s["cdna_profile"] == "explorer"


def test_same_digest_as_the_cli(cli):
    out = subprocess.run(
        [cli, "run", "--scenario", "clusters", "--tokens", "600", "--seed", "7",
         "--ticks", "40", "--quiet", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]
    expected = json.loads(out)
    sim = small()
    sim.step(40)
    s = sim.summary()
    assert sim.digest == expected["digest"]
    # The summary has the CLI's keys, and the same outcome.
    assert set(s) == set(expected)
    for k in ("digest", "tokens", "links", "final_tick", "groups_per_level", "ari_level1"):
        assert s[k] == expected[k], k


def test_step_releases_the_gil():
    sim = small(scenario="uniform", tokens=20000)
    sim.step(1)
    count = 0
    running = True

    def spin():
        nonlocal count
        while running:
            count += 1

    # How fast the other thread counts with the GIL to itself.
    t = threading.Thread(target=spin)
    t0 = time.perf_counter()
    t.start()
    time.sleep(0.2)
    alone = count / (time.perf_counter() - t0)
    count = 0
    try:
        t0 = time.perf_counter()
        # Step until at least half a second was spent in step().
        while time.perf_counter() - t0 < 0.5:
            sim.step(1)
        elapsed = time.perf_counter() - t0
    finally:
        running = False
        t.join()
    # Holding the GIL through the ticks would leave the other thread ~nothing.
    assert count > 0.25 * alone * elapsed, (count, alone, elapsed)


def test_ctrl_c_stops_between_ticks_and_keeps_the_world():
    sim = small(scenario="uniform", tokens=20000)
    # A shell's background job starts with SIGINT ignored; Python then raises
    # no KeyboardInterrupt. Install Python's handler for the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.get_ident()
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            sim.step(5_000)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    reached = sim.tick
    assert 0 < reached < 5_000
    assert sim.summary()["interrupted"] is True
    sim.step(1)
    assert sim.tick == reached + 1


def test_wal_resume_equals_an_uninterrupted_run(tmp_path):
    straight = small()
    straight.step(50)
    wal = tmp_path / "wal"
    first = small(wal=str(wal), durability="sync", snapshot_every=16)
    first.step(30)
    s = first.close()
    assert s["final_tick"] == 30 and s["wal_records"] == 30
    with pytest.raises(RuntimeError, match="ended"):
        first.step(1)
    report = neurograph.recover(str(wal))
    assert report["tick"] == 30
    resumed = small(wal=str(wal))
    assert resumed.tick == 30
    resumed.step(20)
    assert resumed.digest == straight.digest
    assert resumed.summary()["recovery"]["tick"] == 30
    resumed.close()


def test_a_wal_of_another_run_is_refused(tmp_path):
    wal = tmp_path / "wal"
    with small(wal=str(wal)) as sim:
        sim.step(3)
    with pytest.raises(ValueError, match="another run"):
        small(wal=str(wal), seed=8)


def test_groups_per_level_match_the_group_table():
    sim = small()
    sim.step(30)
    table = sim.group_table()
    g1 = sim.groups(1)
    assert g1.dtype == np.int64 and g1.shape == (len(sim),)
    level1 = table["id"][table["level"] == 1]
    sizes = dict(zip(table["id"], table["size"]))
    ids, counts = np.unique(g1[g1 >= 0], return_counts=True)
    assert set(ids) <= set(level1)
    for gid, c in zip(ids, counts):
        assert sizes[gid] == c
    g2 = sim.groups(2)
    parent = dict(zip(table["id"], table["parent"]))
    for a, b in zip(g1, g2):
        assert b == (parent[a] if a >= 0 else -1)
    assert sim.summary()["groups_per_level"][0] == len(level1)
    with pytest.raises(ValueError, match="level = 0"):
        sim.groups(0)


def test_velocities_round_trip():
    sim = small(tokens=5)
    sim.set(1, "velocity", [0.25] * 8)
    assert np.array_equal(sim.velocities()[1], np.full(8, 0.25, np.float32))


def test_close_right_after_a_command_keeps_it(tmp_path):
    wal = tmp_path / "wal"
    sim = small(wal=str(wal))
    sim.step(2)
    sim.spawn_batch(np.zeros((4, 8)))
    with pytest.raises(RuntimeError, match="1 command applied after tick 2 not in the WAL yet"):
        sim.close()
    sim.step(1)  # journals the spawn
    assert sim.close()["tokens"] == 604
    resumed = small(wal=str(wal))
    assert len(resumed) == 604 and resumed.tick == 3
    resumed.close()


def test_groups_above_the_top_level_are_all_minus_one():
    sim = small()
    sim.step(30)
    top = len(sim.summary()["groups_per_level"])
    t0 = time.perf_counter()
    g = sim.groups(10**12)
    assert time.perf_counter() - t0 < 1
    assert (g == -1).all() and (sim.groups(top + 1) == -1).all()


def test_nearest_and_within_are_exact():
    sim = small(tokens=400)
    sim.step(10)
    pos = sim.positions().astype(np.float64)
    ids = sim.ids()
    q = pos[17] + 0.05
    d = np.sqrt(((pos - q) ** 2).sum(axis=1))
    order = np.lexsort((ids, d))
    got_ids, got_d = sim.nearest(q.tolist(), k=7)
    assert list(got_ids) == list(ids[order[:7]])
    assert np.allclose(got_d, d[order[:7]], rtol=1e-4, atol=1e-5)
    r = float(np.sort(d)[12])
    w_ids, w_d = sim.within(q.tolist(), r)
    assert set(w_ids) == set(ids[d <= r * (1 - 1e-6)]) | (set(w_ids) & set(ids[np.abs(d - r) < 1e-4]))
    assert np.all(np.diff(w_d) >= 0)
    with pytest.raises(ValueError, match="radius = -1"):
        sim.within([0] * 8, -1)
    with pytest.raises(ValueError, match=r"point\[2\] = NaN"):
        sim.nearest([0, 0, float("nan"), 0, 0, 0, 0, 0])
    # The index follows commands: a token spawned at q is found at once.
    (new,) = sim.spawn_batch(np.array([q]))
    assert sim.nearest(q.tolist(), k=1)[0][0] == new
