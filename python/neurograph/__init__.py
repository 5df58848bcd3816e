"""NeuroGraph: tokens in an 8-dimensional semantic space, stepped by a Rust engine.

>>> import neurograph
>>> sim = neurograph.Simulation(scenario="clusters", tokens=2000, seed=7)
>>> sim.step(50)
50
>>> sim.positions().shape
(2000, 8)

Arrays come back as numpy arrays in increasing token-id order (the order of
``Simulation.ids()``). ``Simulation.step`` releases the GIL; Ctrl-C interrupts
between ticks. See ``docs/python.md`` in the repository.
"""

from ._neurograph import Simulation, recover, scenarios, __version__

__all__ = ["Simulation", "recover", "scenarios", "__version__"]
