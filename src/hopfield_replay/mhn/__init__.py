"""The paper's modern-Hopfield-network experiments.

    geometry.py     MemorySet, paper_geometry, gaussian_clusters, random rotations (the task change)
    dynamics.py     fixed points, retrieval weights and Jacobian, energies after rotation / with a replayed memory,
                    the replay-gain identity, the no-drift gain, (source, target) families
    closed_form.py  run_closed_form: intrinsic forgetting and replay gains with fixed memories, and their summary
    trained.py      run_trained: MHN-BM, memories trained by maximum likelihood on task A then B, replay arms

Their params are ``config.MHNClosedFormParams`` and ``config.MHNTrainedParams``.
"""

from __future__ import annotations

from .closed_form import ClosedFormResult, memory_set_from_params, run_closed_form
from .dynamics import FAMILIES
from .geometry import MemorySet, gaussian_clusters, paper_geometry
from .trained import ARMS, run_trained

__all__ = ["ARMS", "FAMILIES", "ClosedFormResult", "MemorySet", "gaussian_clusters", "memory_set_from_params",
           "paper_geometry", "run_closed_form", "run_trained"]
