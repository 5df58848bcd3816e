"""A plain O(N^2) numpy prototype of candidate force laws in 8D, used to choose
the engine's law (see docs/physics.md). Not the engine: it has no links, no
hierarchy and no neighbour lists, and runs in float64.

Each token i feels, from every j within R = 1 (u = r / R):

    F_i += [k_f q_i q_j - k_d (P_i + P_j) / 2] w(u) d/r        (field and density)
    F_i -= k_c (1 - r/sigma)^2 d/r                               (core, r < sigma)

with rho_i = sum_j W(u), P_i = (rho_i / rho0)^n and w = -dW/du; then the
engine's integrator: v += F dt; v *= 1 - gamma dt; |v| <= v_max; x += v dt.

    python3 examples/force_law_prototype.py --kernel q8_2 --rho0 16 --n 2 --start collapse

prints, every --log ticks: tick, mean / median / max neighbours within R, mean
rho / rho0, and the smallest and median nearest-neighbour distance (0 means
tokens fused). Needs numpy.
"""

import argparse

import numpy as np

KERNELS = {
    # name: (W(u), w(u) = -dW/du)
    "lin2": (lambda u: (1 - u) ** 2, lambda u: 2 * (1 - u)),  # Warren's weight, r_d = R
    "quad": (lambda u: 1 - u**2, lambda u: 2 * u),
    "q4_2": (lambda u: (1 - u**4) ** 2, lambda u: 8 * u**3 * (1 - u**4)),
    "q8_2": (lambda u: (1 - u**8) ** 2, lambda u: 16 * u**7 * (1 - u**8)),  # the engine's
}


def start(kind, n, rng):
    if kind == "collapse":  # uniform in the 8-ball of radius 0.05
        g = rng.standard_normal((n, 8))
        g /= np.linalg.norm(g, axis=1)[:, None]
        return g * 0.05 * rng.random(n)[:, None] ** (1 / 8)
    return (rng.random((n, 8)) - 0.5) * float(kind)  # a cube of that side


def run(x, q, a):
    W, w = KERNELS[a.kernel]
    v = np.zeros_like(x)
    for t in range(a.ticks + 1):
        d = x[None, :, :] - x[:, None, :]  # d[i, j] = x_j - x_i
        r2 = (d**2).sum(-1)
        np.fill_diagonal(r2, 1e9)
        r = np.sqrt(r2)
        near = r < 1.0
        u = np.where(near, r, 1.0)
        rho = np.where(near, W(u), 0).sum(1)
        p = (rho / a.rho0) ** a.n
        if t % a.log == 0:
            nb = near.sum(1)
            nn = r.min(1)
            print(
                f"tick {t:4d}  neighbours {nb.mean():7.2f} (median {np.median(nb):5.1f}, max {nb.max():4d})"
                f"  rho/rho0 {rho.mean() / a.rho0:6.3f}  nearest {nn.min():.3f} / {np.median(nn):.3f}",
                flush=True,
            )
        amp = a.kf * np.outer(q, q) - a.kd * (p[:, None] + p[None, :]) / 2
        rr = np.where(r > 0, r, 1)
        coef = np.where(near, amp * w(u) / rr, 0)
        coef -= np.where(r < a.sigma, a.kc * (1 - r / a.sigma) ** 2 / rr, 0)
        f = (coef[:, :, None] * d).sum(1)
        v = (v + f * a.dt) * (1 - a.gamma * a.dt)
        s = np.linalg.norm(v, axis=1)
        v *= np.minimum(1, a.vmax / np.maximum(s, 1e-30))[:, None]
        x += v * a.dt


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="q8_2")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--start", default="collapse", help="'collapse' or a cube side, e.g. 2.0")
    ap.add_argument("--qlo", type=float, default=1.0, help="charges uniform in [qlo, 1]")
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--log", type=int, default=50)
    ap.add_argument("--rho0", type=float, default=16.0)
    ap.add_argument("--n", type=int, default=2, help="pressure exponent")
    ap.add_argument("--kf", type=float, default=1.0)
    ap.add_argument("--kd", type=float, default=1.0)
    ap.add_argument("--kc", type=float, default=10.0, help="core strength (0: no core)")
    ap.add_argument("--sigma", type=float, default=0.4)
    ap.add_argument("--dt", type=float, default=0.05)
    ap.add_argument("--gamma", type=float, default=2.0)
    ap.add_argument("--vmax", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    x = start(a.start, a.tokens, rng)
    q = rng.uniform(a.qlo, 1.0, a.tokens)
    run(x, q, a)


if __name__ == "__main__":
    main()
