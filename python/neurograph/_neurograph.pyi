"""Type stubs of the Rust extension (see docs/python.md for the full reference)."""

from os import PathLike
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, PathLike]
_Config = Union[_Path, dict]

__version__: str

class Simulation:
    """A NeuroGraph simulation: tokens in an 8D space, stepped tick by tick.

    Arrays come back in increasing token-id order (the order of ``ids()``).
    """

    def __init__(
        self,
        scenario: Optional[str] = None,
        tokens: Optional[int] = None,
        seed: Optional[int] = None,
        cdna: Optional[_Path] = None,
        config: Optional[_Config] = None,
        *,
        wal: Optional[_Path] = None,
        durability: Optional[str] = None,
        snapshot_every: Optional[int] = None,
        threads: Optional[int] = None,
        memory_budget: Optional[int] = None,
    ) -> None: ...
    @staticmethod
    def from_csv(
        path: _Path,
        *,
        seed: Optional[int] = None,
        cdna: Optional[_Path] = None,
        config: Optional[_Config] = None,
        wal: Optional[_Path] = None,
        durability: Optional[str] = None,
        snapshot_every: Optional[int] = None,
        threads: Optional[int] = None,
        memory_budget: Optional[int] = None,
    ) -> "Simulation": ...
    @staticmethod
    def from_embeddings(
        x: npt.ArrayLike,
        labels: Optional[npt.ArrayLike] = None,
        groups: Optional[npt.ArrayLike] = None,
        *,
        scale: Optional[float] = None,
        seed: Optional[int] = None,
        cdna: Optional[_Path] = None,
        config: Optional[_Config] = None,
        wal: Optional[_Path] = None,
        durability: Optional[str] = None,
        snapshot_every: Optional[int] = None,
        threads: Optional[int] = None,
        memory_budget: Optional[int] = None,
    ) -> "Simulation":
        """`x` (N, D), D >= 8, reduced to 8D by PCA and scaled from its k-NN distances."""
    @property
    def embedding(self) -> Optional[dict]: ...
    def step(self, n: int = 1) -> int:
        """Runs `n` ticks with the GIL released; returns the tick reached."""
    @property
    def tick(self) -> int: ...
    @property
    def digest(self) -> str: ...
    def __len__(self) -> int: ...
    def ids(self) -> npt.NDArray[np.uint64]:
        """(N,) uint64, increasing."""
    def positions(self) -> npt.NDArray[np.float32]:
        """(N, 8) float32, field-radius units."""
    def velocities(self) -> npt.NDArray[np.float32]:
        """(N, 8) float32, per unit of simulated time."""
    def charges(self) -> npt.NDArray[np.float32]:
        """(N,) float32 in [-1, 1]."""
    def masses(self) -> npt.NDArray[np.float32]:
        """(N,) float32."""
    def radii(self) -> npt.NDArray[np.float32]:
        """(N,) float32: field radii (the pair cutoff)."""
    def strengths(self) -> npt.NDArray[np.float32]:
        """(N,) float32 in [0, 1]."""
    def links(self) -> Tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """(pairs (L, 2) uint64, weights (L,) float32)."""
    def groups(self, level: int = 1) -> npt.NDArray[np.int64]:
        """(N,) int64: the group at `level`, or -1."""
    def group_table(self) -> dict: ...
    def nearest(
        self, point: Sequence[float], k: int = 10
    ) -> Tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """The k nearest tokens, nearest first (ties by id): (ids, distances). Exact."""
    def within(
        self, point: Sequence[float], radius: float
    ) -> Tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """Every token within radius, nearest first: (ids, distances). Exact."""
    def spawn_batch(
        self,
        positions: npt.ArrayLike,
        charges: Optional[npt.ArrayLike] = None,
        masses: Optional[npt.ArrayLike] = None,
        radii: Optional[npt.ArrayLike] = None,
        strengths: Optional[npt.ArrayLike] = None,
    ) -> npt.NDArray[np.uint64]:
        """All or nothing; ValueError names the row, field, value and limit."""
    def link(
        self, a: int, b: int, weight: float = 1.0, rest_length: float = 0.5, rigidity: float = 0.5
    ) -> None: ...
    def set(self, id: int, field: str, value: Union[float, Sequence[float]]) -> None: ...
    def impulse(self, id: int, impulse: Sequence[float]) -> None: ...
    def despawn(self, id: int) -> None: ...
    def summary(self) -> dict[str, Any]: ...
    def close(self) -> dict[str, Any]: ...
    def __enter__(self) -> "Simulation": ...
    def __exit__(self, *args: Any) -> bool: ...

def recover(dir: _Path) -> dict[str, Any]:
    """Recovers a WAL read-only; returns the recovery report."""

def scenarios() -> list[str]: ...
