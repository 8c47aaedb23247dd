"""Modern Hopfield energy, streamed over chunks so that no N x M matrix is ever held whole.

Inner-product form (Ramsauer et al. 2020), memories x_mu in R^d, query q, inverse temperature beta:

    E(q) = 1/2 |q|^2 - (1/beta) * logsumexp_mu( beta * x_mu . q + log w_mu )

Distance (kernel) form, the energy of the Gaussian mixture with variance 1/beta centred on the memories:

    E(q) = -(1/beta) * logsumexp_mu( -beta * |q - x_mu|^2 / 2 + log w_mu )

w_mu are optional per-memory weights (replay as added mass; default 1). With ``exclude_self=True`` the queries
are the memories themselves and each row's own memory is masked with -inf (leave-one-out energy).

How it is computed (both forms are one streamed log-sum-exp of a matrix product plus a per-memory bias):

    lse_q = logsumexp_mu( beta * q . x_mu + b_mu )

    inner form:     b_mu = log w_mu,                               E(q) = 1/2 |q|^2   - lse_q / beta
    distance form:  b_mu = log w_mu - beta/2 |x_mu - c|^2,         E(q) = 1/2 |q - c|^2 - lse_q / beta
                    (q and x_mu shifted by c = mean of the memories, which leaves |q - x_mu| unchanged and keeps
                     the expansion |q|^2 + |x|^2 - 2 q.x from cancelling catastrophically on off-centre data)

For each query chunk, memory chunks are visited in turn; each (query_chunk x memory_chunk) tile of logits is
produced by one ``addmm`` (alpha = beta folds the scale, the bias row is the GEMM's C input) into one reused
buffer, the leave-one-out mask touches only the tile's diagonal (when the tile crosses the diagonal), and the tile
is reduced in place with a running max (online log-sum-exp):

    m' = max(m, max_mu tile),  s <- s * exp(m - m') + sum_mu exp(tile - m'),  lse = m' + log s

so peak extra memory is one tile plus one centred memory chunk, whatever N and M are, and the time is that of the
matrix product plus a few passes over a cache-resident tile. Accumulation is in fp32 (fp64 for fp64 inputs); on
CUDA, fp16/bf16 inputs are multiplied with fp32 output. When an input requires grad (the trained MHN's loss) the
same streaming runs out of place so that autograd can differentiate it.

``knn_distances`` (and ``nearest_neighbour_sqdist``, its k = 1 case, squared) streams the same tiles of
|x - c|^2 / 2 - (q - c).(x - c) with a running top-k, then recomputes the k selected distances directly.
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import torch

Form = Literal["inner", "distance"]
FORMS = ("inner", "distance")

# Tiles of 4096 x 4096 (64 MiB of fp32 logits): the GEMM on such a tile runs at the speed of one big matmul, and
# each tile costs a fixed handful of parallel passes (amax, subtract, exp2, sum) whose per-call and thread-sync
# overhead is amortised; smaller tiles were measurably slower on 2 shared cores (each parallel region waits for
# both threads), larger ones only add memory. Extra memory: the tile plus one query chunk and one memory chunk.
DEFAULT_QUERY_CHUNK = 4096
DEFAULT_MEMORY_CHUNK = 4096
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


def _accumulation_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_matrix(x, name: str, device=None) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    if x.ndim == 1:
        x = x.unsqueeze(0)
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    if not torch.is_floating_point(x):
        x = x.float()
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: need at least one row")
    return x


def _query_memory_pair(queries, memories, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as (rows, d) matrices on the queries' device, checked to share d (and, for a leave-one-out
    computation, to be the same rows)."""
    q = _as_matrix(queries, "queries")
    m = _as_matrix(memories, "memories", device=q.device)
    if q.shape[1] != m.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but memories {m.shape[1]}")
    if exclude_self and q.shape[0] != m.shape[0]:
        raise ValueError(f"exclude_self=True needs queries == memories (got {q.shape[0]} queries, "
                         f"{m.shape[0]} memories)")
    return q, m


def _compute_dtype(q: torch.Tensor, m: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the inputs' common dtype; fp16/bf16 only on a GPU (fp32 on the CPU)."""
    compute = torch.promote_types(q.dtype, m.dtype)
    if q.device.type == "cpu" and compute in (torch.float16, torch.bfloat16):
        compute = torch.float32
    return compute


def _check_chunks(query_chunk: int, memory_chunk: int) -> None:
    if query_chunk < 1 or memory_chunk < 1:
        raise ValueError("query_chunk and memory_chunk must be >= 1")


def _logits(q, m, alpha: float, bias, acc: torch.dtype, out=None) -> torch.Tensor:
    """alpha * q @ m.T + bias[None, :] in ``acc``, into ``out`` when given (one GEMM, no temporaries)."""
    if q.dtype != acc:  # fp16/bf16 on CUDA: low-precision inputs, fp32 accumulation and output
        try:
            tile = torch.mm(q, m.T, out_dtype=acc)
        except (TypeError, RuntimeError, NotImplementedError):  # torch without mm(out_dtype=): fp32 inside, 16-bit out
            tile = (q @ m.T).to(acc)
        tile.mul_(alpha)
        if bias is not None:
            tile.add_(bias)
        return tile
    if out is None:
        return torch.mm(q, m.T) * alpha if bias is None else torch.addmm(bias, q, m.T, alpha=alpha)
    if bias is None:
        return out.addmm_(q, m.T, beta=0.0, alpha=alpha)
    return torch.addmm(bias, q, m.T, alpha=alpha, out=out)


def _mask_diagonal(tile: torch.Tensor, q0: int, m0: int, value: float) -> None:
    """Set tile[i, j] = value where global row q0 + i == global column m0 + j (only if the tile crosses it)."""
    offset = q0 - m0
    if -tile.shape[0] < offset < tile.shape[1]:
        tile.diagonal(offset).fill_(value)


def _streamed_logsumexp(
    q_all: torch.Tensor,
    m_all: torch.Tensor,
    alpha: float,
    bias: torch.Tensor | None,
    *,
    center: torch.Tensor | None,
    exclude_self: bool,
    query_chunk: int,
    memory_chunk: int,
    acc: torch.dtype,
    differentiable: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse_q, |q - c|^2) for every query row: lse_q = logsumexp_mu(alpha (q - c).(x_mu - c) + bias_mu).

    ``center`` c is None for no shift. The (N,) outputs are in ``acc``; nothing of size N x M is allocated.
    The in-place path works in base 2 (logits scaled by log2(e), folded into the GEMM's alpha and the bias):
    exp2 is ~3x cheaper than exp on the CPU, and lse = ln(2) * (m' + log2 s).
    """
    n, m_count = q_all.shape[0], m_all.shape[0]
    compute = q_all.dtype
    if not differentiable:
        alpha = alpha * _LOG2E
        bias = None if bias is None else bias * _LOG2E
        rows_max, cols_max = min(query_chunk, n), min(memory_chunk, m_count)
        tile_buf = torch.empty(rows_max * cols_max, dtype=acc, device=q_all.device)
        m_buf = torch.empty(cols_max, m_all.shape[1], dtype=acc, device=q_all.device) if center is not None else None
    lse_parts, qsq_parts = [], []
    for q0 in range(0, n, query_chunk):
        q = q_all[q0 : q0 + query_chunk]
        if center is not None:
            q_acc = q.to(acc) - center
            q = q_acc.to(compute)
        else:
            q_acc = q.to(acc)
        qsq_parts.append(_row_sq(q_acc))
        rows = q.shape[0]
        if differentiable:
            lse = torch.full((rows,), -math.inf, dtype=acc, device=q.device)
        else:
            shift = torch.zeros(rows, dtype=acc, device=q.device)  # run_sum is relative to 2**shift
            run_max = torch.full((rows,), -math.inf, dtype=acc, device=q.device)
            run_sum = torch.zeros(rows, dtype=acc, device=q.device)
        for m0 in range(0, m_count, memory_chunk):
            m = m_all[m0 : m0 + memory_chunk]
            b = None if bias is None else bias[m0 : m0 + memory_chunk]
            if differentiable:
                if center is not None:
                    m = (m.to(acc) - center).to(compute)
                tile = _logits(q, m, alpha, b, acc)
                if exclude_self:
                    _mask_diagonal(tile, q0, m0, -math.inf)
                lse = torch.logaddexp(lse, torch.logsumexp(tile, dim=1))
                continue
            if center is not None and compute == acc:
                m = torch.sub(m, center, out=m_buf[: m.shape[0]])
            elif center is not None:
                m = (m.to(acc) - center).to(compute)
            tile = _logits(q, m, alpha, b, acc, out=tile_buf[: rows * m.shape[0]].view(rows, m.shape[0]))
            if exclude_self:
                _mask_diagonal(tile, q0, m0, -math.inf)
            # online log-sum-exp (base 2), in place: s <- s * 2^(m - m') + sum 2^(tile - m'), m' the new running max
            new_max = torch.maximum(run_max, tile.amax(dim=1))
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)  # a row still all -inf: any finite shift
            run_sum.mul_(torch.exp2(run_max - shift))  # 0 while run_max is -inf (then run_sum is 0 too)
            run_max = new_max
            tile.sub_(shift[:, None]).exp2_()
            run_sum.add_(tile.sum(dim=1))
        lse_parts.append(lse if differentiable else (shift + torch.log2(run_sum)) * _LN2)
    return torch.cat(lse_parts), torch.cat(qsq_parts)


def hopfield_energy(
    queries,
    memories,
    beta: float,
    *,
    form: Form = "inner",
    exclude_self: bool = False,
    weights=None,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    memory_chunk: int = DEFAULT_MEMORY_CHUNK,
) -> torch.Tensor:
    """One modern Hopfield energy per query row (see the module docstring for both forms).

    queries: (N, d) or (N, ...) flattened to (N, d); memories: (M, d). Torch tensors on any device or arrays.
    weights: optional (M,) non-negative memory masses. exclude_self: leave-one-out (requires N == M, same rows).
    Returns a tensor of shape (N,) on the queries' device, fp64 for fp64 inputs and fp32 otherwise.
    Peak extra memory is about query_chunk x memory_chunk accumulation floats plus memory_chunk x d inputs.
    Differentiable (out of place) when an input requires grad; in place and allocation-free per tile otherwise.
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not one of {FORMS}")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    _check_chunks(query_chunk, memory_chunk)
    q_all, m_all = _query_memory_pair(queries, memories, exclude_self)
    m_count = m_all.shape[0]
    acc = _accumulation_dtype(q_all, m_all)
    # Matmuls run in the inputs' common dtype (fp16/bf16 allowed on GPU); everything after them in ``acc``.
    compute = _compute_dtype(q_all, m_all)
    q_all = q_all.to(compute)
    m_all = m_all.to(compute)

    log_w = None
    if weights is not None:
        w = torch.as_tensor(weights, device=q_all.device).to(acc).reshape(-1)
        if w.shape[0] != m_count:
            raise ValueError(f"weights has {w.shape[0]} entries but there are {m_count} memories")
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
            raise ValueError("weights must be finite and >= 0")
        log_w = torch.log(w)
    differentiable = torch.is_grad_enabled() and (
        q_all.requires_grad or m_all.requires_grad or (log_w is not None and log_w.requires_grad)
    )

    center, bias = None, log_w
    if form == "distance":
        # Shift both sides by the memories' mean (any shift is exact for distances; the mean minimises |x|^2).
        center = m_all.mean(0, dtype=acc) if m_all.dtype != acc else m_all.mean(0)
        sq = torch.cat([_sq_norms(m_all[i : i + memory_chunk], center, acc) for i in range(0, m_count, memory_chunk)])
        bias = (-0.5 * beta) * sq if log_w is None else (-0.5 * beta) * sq + log_w
    lse, q_sq = _streamed_logsumexp(
        q_all, m_all, float(beta), bias, center=center, exclude_self=exclude_self, query_chunk=query_chunk,
        memory_chunk=memory_chunk, acc=acc, differentiable=differentiable,
    )
    # E = 1/2 |q - c|^2 - lse / beta, combined in fp64 (the two terms cancel for the distance form).
    energy = 0.5 * q_sq.double() - lse.double() / beta
    return energy.to(acc)


def _row_sq(x: torch.Tensor) -> torch.Tensor:
    """|x_i|^2 per row, as a batch of dot products (no temporary of the size of x)."""
    return torch.bmm(x.unsqueeze(1), x.unsqueeze(2)).view(-1)


def _sq_norms(rows: torch.Tensor, center: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor:
    """|row - c|^2 per row in ``acc`` (one chunk of rows: the temporary is chunk x d)."""
    r = rows.to(acc)
    if center is not None:
        r = r - center
    return _row_sq(r)


def nearest_neighbour_sqdist(
    queries,
    memories,
    *,
    exclude_self: bool = False,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    memory_chunk: int = DEFAULT_MEMORY_CHUNK,
) -> torch.Tensor:
    """min_mu |q - x_mu|^2 per query, streamed over chunks like ``hopfield_energy`` (no N x M matrix).

    The neighbour is found from the expansion |m - c|^2 - 2 (q - c).(m - c) (c the memories' mean) with a running
    arg-min; its squared distance is then recomputed directly as |q - x_nn|^2, so the value carries no
    cancellation error. Result in fp32 (fp64 for fp64 inputs); O(N + M) extra memory beyond one tile.
    (``_knn_sqdist`` with k = 1.)
    """
    return _knn_sqdist(queries, memories, 1, exclude_self=exclude_self, query_chunk=query_chunk,
                       memory_chunk=memory_chunk)[:, 0]


def knn_distances(
    queries,
    memories,
    k: int,
    *,
    exclude_self: bool = False,
    query_chunk: int = DEFAULT_QUERY_CHUNK,
    memory_chunk: int = DEFAULT_MEMORY_CHUNK,
) -> torch.Tensor:
    """The Euclidean distances to the k nearest memories per query, ascending: out[i, j] = |q_i - x_(j+1)|, (N, k).

    Streamed like ``nearest_neighbour_sqdist``: candidates are ranked by |x - c|^2 / 2 - (q - c).(x - c) (the same
    order as |q - x|^2 for a fixed q; c the memories' mean) one memory chunk at a time, keeping a running top-k merged
    chunk by chunk; the k selected distances are then recomputed directly as |q - x_nn| (no cancellation error) and
    sorted. exclude_self: leave-one-out (queries are the memories, the diagonal is masked). Ties between equally
    distant memories give the same distances whichever is kept. fp32 result (fp64 for fp64 inputs); extra memory one
    tile plus O(N k + M).
    """
    return _knn_sqdist(queries, memories, k, exclude_self=exclude_self, query_chunk=query_chunk,
                       memory_chunk=memory_chunk).sqrt_()


def _knn_sqdist(queries, memories, k, *, exclude_self, query_chunk, memory_chunk) -> torch.Tensor:
    """(N, k) ascending squared distances to the k nearest memories (the core of the two functions above)."""
    _check_chunks(query_chunk, memory_chunk)
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q_all, m_all = _query_memory_pair(queries, memories, exclude_self)
    n, m_count = q_all.shape[0], m_all.shape[0]
    if exclude_self and n < k + 1:
        what = "nearest neighbour" if k == 1 else f"{k}-nearest-neighbour search"
        raise ValueError(f"a leave-one-out {what} needs at least {k + 1} rows, got {n}")
    if not exclude_self and m_count < k:
        raise ValueError(f"a {k}-nearest-neighbour search needs at least {k} memories, got {m_count}")
    acc = _accumulation_dtype(q_all, m_all)
    q_all, m_all = q_all.detach().to(acc), m_all.detach().to(acc)
    with torch.no_grad():
        center = m_all.mean(0)
        half_sq = 0.5 * torch.cat([_sq_norms(m_all[i : i + memory_chunk], center, acc)
                                   for i in range(0, m_count, memory_chunk)])
        rows_max, cols_max = min(query_chunk, n), min(memory_chunk, m_count)
        tile_buf = torch.empty(rows_max * cols_max, dtype=acc, device=q_all.device)
        m_buf = torch.empty(cols_max, m_all.shape[1], dtype=acc, device=q_all.device)
        nn_index = torch.empty(n, k, dtype=torch.long, device=q_all.device)
        for q0 in range(0, n, query_chunk):
            q = q_all[q0 : q0 + query_chunk] - center
            rows = q.shape[0]
            best = torch.full((rows, k), math.inf, dtype=acc, device=q.device)
            best_idx = torch.zeros((rows, k), dtype=torch.long, device=q.device)
            for m0 in range(0, m_count, memory_chunk):
                m = torch.sub(m_all[m0 : m0 + memory_chunk], center, out=m_buf[: min(memory_chunk, m_count - m0)])
                # |x|^2/2 - q.x: the same order as |q - x|^2 for a fixed q
                tile = torch.addmm(half_sq[m0 : m0 + m.shape[0]], q, m.T, alpha=-1.0,
                                   out=tile_buf[: rows * m.shape[0]].view(rows, m.shape[0]))
                if exclude_self:
                    _mask_diagonal(tile, q0, m0, math.inf)
                if k == 1:  # running arg-min (cheaper than a top-k merge)
                    val, idx = tile.min(dim=1, keepdim=True)
                    better = val < best
                    best = torch.where(better, val, best)
                    best_idx = torch.where(better, idx + m0, best_idx)
                    continue
                # running top-k: the chunk's k smallest, merged with the k kept so far
                val, idx = tile.topk(min(k, m.shape[0]), dim=1, largest=False, sorted=False)
                best, pos = torch.cat([best, val], dim=1).topk(k, dim=1, largest=False, sorted=False)
                best_idx = torch.cat([best_idx, idx + m0], dim=1).gather(1, pos)
            nn_index[q0 : q0 + rows] = best_idx
        out = torch.empty(n, k, dtype=acc, device=q_all.device)
        for q0 in range(0, n, query_chunk):
            q = q_all[q0 : q0 + query_chunk]
            for j in range(k):
                out[q0 : q0 + q.shape[0], j] = _row_sq(q - m_all[nn_index[q0 : q0 + query_chunk, j]])
    return out if k == 1 else out.sort(dim=1).values


def beta_from_data(memories, **chunks) -> float:
    """Inverse temperature set from the data: beta = 1 / median_k min_{mu != k} |x_k - x_mu|^2.

    With this rule a sample's nearest other memory sits at beta * d^2 / 2 = 1/2 in the typical case, so the
    leave-one-out energy weighs a handful of neighbours rather than one (too sharp) or all (too flat).
    The nearest neighbours are streamed (``nearest_neighbour_sqdist``): O(N) memory, one GEMM's time.
    The median is torch's (the lower of the two middle values for an even count).
    """
    nn = nearest_neighbour_sqdist(memories, memories, exclude_self=True, **chunks)
    median = float(nn.median())
    if not median > 0:
        raise ValueError("median nearest-neighbour distance is 0 (duplicate samples?); give beta explicitly")
    return 1.0 / median


def beta_from_snr(alphas_cumprod: torch.Tensor, t: int) -> float:
    """beta tied to a diffusion noise level: beta = SNR(t) = abar_t / (1 - abar_t) (noise variance 1/beta)."""
    abar = float(alphas_cumprod[t])
    return abar / (1.0 - abar)


def retrieve(queries, memories, beta: float) -> torch.Tensor:
    """One retrieval (CCCP) step of the inner-product form: z <- X^T softmax(beta X z), row-wise."""
    q = _as_matrix(queries, "queries")
    m = _as_matrix(memories, "memories", device=q.device).to(q.dtype)
    return torch.softmax(beta * (q @ m.T), dim=1) @ m
