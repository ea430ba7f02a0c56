"""Many small symmetric positive-definite systems at once, vectorised over the batch.

``torch.linalg`` solves a batch of small systems one LAPACK call per matrix on the CPU:
for 24 x 24 systems that costs about 6 microseconds each, more than the rest of a series'
nightly adaptation. Here the Cholesky factorisation and both substitutions run column by
column with every operation over the whole batch (the batch axis innermost, contiguous),
so a chunk of a thousand series costs about a hundred elementwise kernels: about 2.5
microseconds per 24 x 24 system on one core. Not differentiable in place: training uses
``torch.linalg`` (``tsmeta.meta.maml.ridge_head`` picks).
"""

from __future__ import annotations

import torch

__all__ = ["spd_solve", "inverse_columns"]


def spd_solve(
    a: torch.Tensor, r: torch.Tensor, inverse_diagonal: bool = False,
    inverse_factor: bool = False,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """x with a x = r for a (B, n, n) symmetric positive definite and r (B, n), and, when
    asked, the diagonal of a's inverse (B, n) (leave-one-out residuals need it); else None.

    With ``inverse_factor`` (implies the diagonal) a third output: the inverse of a's
    Cholesky factor, L^-1 (n, n, B), batch axis last, lower triangular (``inverse_columns``
    makes columns of a's inverse of it, for the series that need them).

    A matrix that is not numerically positive definite gives NaN rows (callers treat
    them as failed fits), never an exception.
    """
    inverse_diagonal = inverse_diagonal or inverse_factor
    B, n, _ = a.shape
    # copies, batch axis last (contiguous() alone may return a view when n == 1)
    low = a.permute(1, 2, 0).clone(memory_format=torch.contiguous_format)  # (n, n, B): L
    z = r.t().clone(memory_format=torch.contiguous_format)  # (n, B)
    for j in range(n):
        piv = low[j, j].sqrt_()  # NaN where the matrix is not positive definite
        col = low[j + 1 :, j].div_(piv)  # (n - j - 1, B)
        z[j].div_(piv)
        if j + 1 < n:  # rank-one update of the trailing block, and of the right-hand side
            low[j + 1 :, j + 1 :].addcmul_(col.unsqueeze(1), col.unsqueeze(0), value=-1.0)
            z[j + 1 :].addcmul_(col, z[j].unsqueeze(0), value=-1.0)
    for j in range(n - 1, -1, -1):  # L^T x = z
        z[j].div_(low[j, j])
        if j:
            z[:j].addcmul_(low[j, :j], z[j].unsqueeze(0), value=-1.0)
    if not inverse_diagonal:
        return z.t(), None
    # diag(a^-1)_i = sum_j (L^-1)_ji^2: L^-1 by forward substitution on the identity's
    # columns; row j of L^-1 has entries in columns 0..j only
    inv = torch.zeros_like(low)
    inv.diagonal(dim1=0, dim2=1).fill_(1.0)
    diag = torch.zeros_like(z)  # (n, B)
    for j in range(n):  # row j of L^-1 is final once divided
        row = inv[j, : j + 1].div_(low[j, j])
        diag[: j + 1].addcmul_(row, row)
        if j + 1 < n:
            inv[j + 1 :, : j + 1].addcmul_(
                low[j + 1 :, j].unsqueeze(1), row.unsqueeze(0), value=-1.0
            )
    if inverse_factor:
        return z.t(), diag.t(), inv
    return z.t(), diag.t()


def inverse_columns(inv_factor: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Columns ``idx[b]`` (B, R) of each matrix's inverse, (B, n, R), from ``spd_solve``'s
    inverse factor L^-1 (n, n, B): a^-1 e_i = L^-T (L^-1 e_i), row by row of L^-1 with every
    operation over the whole batch (tiny batched matrix products cost about 4 microseconds
    a matrix on the CPU, and a sum over an axis rounds differently with the batch's size)."""
    n, B = inv_factor.shape[0], inv_factor.shape[2]
    sel = idx.t()[None].expand(n, -1, -1)  # (n, R, B)
    cols = torch.gather(inv_factor, 1, sel)  # (n, R, B): L^-1[k, idx_r]
    out = torch.zeros((n, idx.shape[1], B), dtype=inv_factor.dtype, device=inv_factor.device)
    for k in range(n):  # row k of L^-1 is zero beyond column k
        out[: k + 1].addcmul_(inv_factor[k, : k + 1].unsqueeze(1), cols[k].unsqueeze(0))
    return out.permute(2, 0, 1)
