"""Arrays in and out at scale, beside the engine's own batch spawn, in one run.

    python3 python/benches/arrays.py [--tokens 1000000] [--repeats 3] [--cli target/release/neurograph]

Prints, alternating the two sides `--repeats` times (after one untimed round):
- `positions()` and `ids()` of an N-token world (the numpy arrays out);
- `spawn_batch` of N tokens from a float32 numpy array (validation included),
  beside `neurograph bench spawn --tokens N --repeats 1` (the engine's
  `Simulation::spawn_batch` of prepared specs, same validation), run as a
  subprocess between the Python timings;
and the medians with their ratio. Not part of the test suite.
"""

import argparse
import json
import statistics
import subprocess
import time

import numpy as np

import neurograph


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cli", default="target/release/neurograph")
    a = ap.parse_args()
    n = a.tokens
    budget = 8 << 30
    world = neurograph.Simulation(scenario="uniform", tokens=n, seed=7, memory_budget=budget)
    world.step(1)
    pos_ms, ids_ms, py_spawn, rust_spawn = [], [], [], []
    x = np.random.default_rng(0).uniform(-3, 3, (n, 8)).astype(np.float32)
    # One untimed round first: the first spawn of a process pays the page
    # faults of memory the allocator has not handed out before.
    for round in range(a.repeats + 1):
        t = time.perf_counter()
        p = world.positions()
        pos_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        world.ids()
        ids_ms.append((time.perf_counter() - t) * 1e3)
        assert p.shape == (n, 8)
        empty = neurograph.Simulation(scenario="uniform", tokens=1, seed=7, memory_budget=budget)
        t = time.perf_counter()
        empty.spawn_batch(x)
        py_spawn.append(n / (time.perf_counter() - t))
        del empty
        out = subprocess.run(
            [a.cli, "bench", "spawn", "--tokens", str(n), "--repeats", "1", "--json"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        rust_spawn.append(json.loads(out)["engine_median"])
        if round == 0:
            for v in (pos_ms, ids_ms, py_spawn, rust_spawn):
                v.clear()
    med = statistics.median
    print(f"{n} tokens, {a.repeats} repeats (median)")
    print(f"  positions()            {med(pos_ms):8.1f} ms   ({', '.join(f'{v:.1f}' for v in pos_ms)})")
    print(f"  ids()                  {med(ids_ms):8.1f} ms")
    print(f"  spawn_batch (numpy)    {med(py_spawn) / 1e6:8.2f} M tokens/s ({', '.join(f'{v/1e6:.2f}' for v in py_spawn)})")
    print(f"  engine batch spawn     {med(rust_spawn) / 1e6:8.2f} M tokens/s ({', '.join(f'{v/1e6:.2f}' for v in rust_spawn)})")
    print(f"  Python / engine        {med(py_spawn) / med(rust_spawn):8.2f}")


if __name__ == "__main__":
    main()
