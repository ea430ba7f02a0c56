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

__all__ = ["spd_solve"]


def spd_solve(
    a: torch.Tensor, r: torch.Tensor, inverse_diagonal: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x with a x = r for a (B, n, n) symmetric positive definite and r (B, n), and, when
    asked, the diagonal of a's inverse (B, n) (leave-one-out residuals need it).

    A matrix that is not numerically positive definite gives NaN rows (callers treat
    them as failed fits), never an exception.
    """
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
    return z.t(), diag.t()
