"""The paper's modern-Hopfield-network experiments.

    geometry.py     MemorySet, paper_geometry, gaussian_clusters, random rotations (the task change)
    dynamics.py     fixed points, retrieval weights and Jacobian, energies after rotation / with a replayed memory,
                    the replay-gain identity, the no-drift gain, (source, target) families
    closed_form.py  run_closed_form: intrinsic forgetting and replay gains with fixed memories, and their summary
    trained.py      run_trained: MHN-BM, memories trained by maximum likelihood on task A then B, replay arms

Import from the modules (``from hopfield_replay.mhn.closed_form import run_closed_form``): the package imports
nothing, so a stage depends only on the modules it uses. Their params are ``config.MHNClosedFormParams`` and
``config.MHNTrainedParams``.
"""
