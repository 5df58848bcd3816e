#!/usr/bin/env python3
"""NeuroGraph beside jax-md on an 8D short-range workload, in one run.

For each size N this runs, one after the other on the same machine:

* ours: `neurograph bench steady --scenario uniform --tokens N --ticks T --json`,
  taking the mean tick of the last 100 ticks (steady state: the fields have
  settled at the CDNA's target of 30 neighbours within the field radius);
  learning and the hierarchy are on, as in every run;
* the peer: `../shared/peers/jaxmd_8d.py --N N --nbrs 30 --nl brute --format
  sparse --force grad --integrator damped` (jax-md 0.2.x, its fastest 8D set-up
  as measured in ../shared/peers/README.md: a C/OpenMP all-pairs neighbour list
  built on the host, soft-sphere forces by autodiff, damped Euler), with and
  without its neighbour-list rebuilds.

and prints token-steps (particle-steps) per second side by side, with the
ratio. The workloads are alike, not identical: both are uniform 8D fields with
about 30 neighbours within the cutoff and a Verlet skin, but jax-md evaluates
one soft-sphere pair force per neighbour in a periodic box, while a NeuroGraph
tick evaluates each pair twice (density, then force), learns link weights,
and detects groups every 10 ticks. Each tool reports its neighbours within the
cutoff, printed beside its speed.

Not part of the test suite. Needs `pip install jax-md` and a C compiler (the
peer compiles nlbuild.c on first use), and a release build of neurograph
(`cargo build --release`).

Usage: python3 benches/peer_jaxmd.py [--tokens 10000,100000] [--ticks 1000]
       [--steps 100] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def last_json(text, prefix=""):
    """The last line of `text` that starts with `prefix` and parses as JSON."""
    for line in reversed(text.splitlines()):
        if line.startswith(prefix):
            try:
                return json.loads(line[len(prefix):])
            except json.JSONDecodeError:
                continue
    return None


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout


def ours(binary, n, ticks, threads):
    out = run([binary, "bench", "steady", "--scenario", "uniform", "--tokens", str(n),
               "--ticks", str(ticks), "--threads", str(threads), "--json"])
    r = last_json(out)
    if r is None or r.get("late_tick_s") is None:
        sys.exit(f"neurograph bench steady gave no late-window figure (need --ticks >= 200):\n{out[-2000:]}")
    return {
        "steps_per_s": n / r["late_tick_s"],
        "neighbors": r["last_avg_neighbors"],
        "tick_ms": r["late_tick_s"] * 1e3,
    }


def peer(script, n, steps, threads):
    out = run([sys.executable, script, "--N", str(n), "--nbrs", "30", "--nl", "brute",
               "--format", "sparse", "--force", "grad", "--integrator", "damped",
               "--steps", str(steps), "--threads", str(threads)])
    r = last_json(out, "RESULT ")
    if r is None or r.get("status") != "ok":
        sys.exit(f"jax-md gave no result:\n{out[-2000:]}")
    return {
        "steps_per_s": r["particle_steps_per_s"],
        "steps_per_s_incl_rebuild": r["particle_steps_per_s_incl_rebuild"],
        "neighbors": r["end_stats"]["nbrs_within_rc"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="10000,100000", help="sizes, comma-separated")
    ap.add_argument("--ticks", type=int, default=1000, help="neurograph ticks (>= 200)")
    ap.add_argument("--steps", type=int, default=100, help="jax-md timed steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "neurograph"))
    ap.add_argument("--peer", default=os.path.join(ROOT, "..", "shared", "peers", "jaxmd_8d.py"))
    a = ap.parse_args()
    for path, what in [(a.binary, "cargo build --release"), (a.peer, "../shared beside the repository")]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing ({what})")
    if a.ticks < 200:
        sys.exit(f"--ticks {a.ticks}: at least 200 (the figure is the mean of the last 100 ticks)")
    print(f"{'tokens':>8} | {'neurograph steps/s':>18} {'nbrs':>5} | "
          f"{'jax-md steps/s':>14} {'(+rebuilds)':>12} {'nbrs':>5} | {'ratio':>6}")
    for n in [int(x) for x in a.tokens.split(",")]:
        o = ours(a.binary, n, a.ticks, a.threads)
        p = peer(a.peer, n, a.steps, a.threads)
        ratio = o["steps_per_s"] / p["steps_per_s_incl_rebuild"]
        print(f"{n:>8} | {o['steps_per_s']:>18.3e} {o['neighbors']:>5.1f} | "
              f"{p['steps_per_s']:>14.3e} {p['steps_per_s_incl_rebuild']:>12.3e} "
              f"{p['neighbors']:>5.1f} | {ratio:>6.2f}", flush=True)
    print("ratio: neurograph token-steps/s (last 100 ticks) over jax-md's particle-steps/s "
          "with its neighbour-list rebuilds")


if __name__ == "__main__":
    main()
