"""The MAML paper's sine regression (Finn, Abbeel and Levine 2017, section 5.1).

Tasks: y = A sin(x - phase), A ~ U[0.1, 5.0], phase ~ U[0, pi], x ~ U[-5, 5]. Network: MLP
with two hidden layers of 40 ReLU units (``tsmeta.forecaster.mlp``), one input. Meta-
training: one inner step, alpha = 0.01, meta-batch 25 tasks, Adam 1e-3, K support and K
query points per task. Evaluation: ``--eval-tasks`` new tasks (fixed seed) at K = 5, 10,
20; the model is fine-tuned on the K points with SGD (alpha = 0.01; Meta-SGD uses its
learned rates) and scored by the MSE over 100 evenly spaced x in [-5, 5], after 1, 5 and
10 steps; mean and 95% confidence interval over tasks.

``--train-k eval`` (default) meta-trains one model per evaluation K ("meta-training at the
evaluation's K"); ``--train-k 10`` trains once at K = 10 as in the paper. Every
``--select-every`` iterations the model is scored on 200 validation tasks (their own seed)
and the best snapshot is kept (``--select-every 0``: the last one).

    python benchmarks/sine.py --json sine.json            # full run (minutes)
    python benchmarks/sine.py --quick                     # smoke run for tests
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from tsmeta.forecaster import init_params
from tsmeta.meta.maml import adapt_batch, predict_batch
from tsmeta.meta.tasks import TaskBatch
from tsmeta.meta.train import MetaConfig, MetaLearner

PAPER = {  # 5-shot MSE reported by the papers (1 / 5 / 10 steps where given)
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrain": {1: 2.41, 5: 2.23, 10: 2.19},
    "metasgd": {1: 0.90},
}
ALGOS = ("maml", "fomaml", "metasgd", "pretrain")
EVAL_K = (5, 10, 20)
EVAL_STEPS = (1, 5, 10)
ALPHA = 0.01


def sine_tasks(n: int, k: int, gen: torch.Generator, query: str = "random") -> TaskBatch:
    """n tasks with k support points; query: k random points, or 100 evenly spaced x."""
    amp = torch.rand(n, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(n, 1, generator=gen) * math.pi
    xs = torch.rand(n, k, generator=gen) * 10 - 5
    if query == "grid":
        xq = torch.linspace(-5, 5, 100).expand(n, 100)
    else:
        xq = torch.rand(n, k, generator=gen) * 10 - 5
    ys, yq = amp * torch.sin(xs - phase), amp * torch.sin(xq - phase)
    ones_s, ones_q = torch.ones_like(ys), torch.ones_like(yq)
    zeros = torch.zeros(n)
    return TaskBatch(xs[..., None], ys, ones_s, xq[..., None], yq, ones_q, zeros, zeros + 1)


def _val_mse(learner: MetaLearner, algo: str, batch: TaskBatch) -> float:
    rates = learner.rates if algo == "metasgd" else ALPHA
    params = {n: p.detach() for n, p in learner.params.items()}
    with torch.no_grad():
        fast = adapt_batch(params, batch, 1, rates)
        return ((predict_batch(fast, batch.xq) - batch.yq) ** 2).mean().item()


def train(
    algo: str, k: int, iterations: int, seed: int, select_every: int
) -> tuple[MetaLearner, float, dict]:
    """Meta-train; with ``select_every`` keep the snapshot best on 200 validation tasks.

    Validation tasks come from their own seed, apart from the evaluation tasks: this is
    model selection, as the Panel meta-training loop does, and it guards against the
    occasional collapse of a run (seen with first-order MAML at K = 20: 0.64 at 5,000
    iterations, 3.3 from 10,000 on).
    """
    cfg = MetaConfig(algorithm=algo, k=k, horizon=k, inner_steps=1, inner_lr=ALPHA, meta_batch=25,
                     meta_lr=1e-3, meta_steps=iterations, seed=seed)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    learner = MetaLearner(init_params(1, 40, gen), cfg)
    val = sine_tasks(200, k, torch.Generator().manual_seed(20_000 + k), query="grid")
    best = (math.inf, learner.snapshot(), 0)
    t = time.perf_counter()
    for i in range(1, iterations + 1):
        learner.step(sine_tasks(25, k, gen))
        if select_every and (i % select_every == 0 or i == iterations):
            mse = _val_mse(learner, algo, val)
            if mse < best[0]:
                best = (mse, learner.snapshot(), i)
    secs = time.perf_counter() - t
    selection = {"selected_iteration": iterations, "val_mse_1step": None}
    if select_every:
        params, rates = best[1]
        with torch.no_grad():
            for name, p in learner.params.items():
                p.copy_(params[name])
            if rates is not None:
                for name, r in learner.rates.items():
                    r.copy_(rates[name])
        selection = {"selected_iteration": best[2], "val_mse_1step": round(best[0], 4)}
    return learner, secs, selection


def evaluate(learner: MetaLearner, algo: str, k: int, n_tasks: int, alpha: float) -> dict:
    gen = torch.Generator().manual_seed(10_000 + k)  # the same tasks for every method
    batch = sine_tasks(n_tasks, k, gen, query="grid")
    rates = learner.rates if algo == "metasgd" else alpha
    params = {n: p.detach() for n, p in learner.params.items()}
    out = {}
    with torch.no_grad():
        for steps in EVAL_STEPS:
            fast = adapt_batch(params, batch, steps, rates)
            mse = ((predict_batch(fast, batch.xq) - batch.yq) ** 2).mean(1)  # per task
            half = 1.96 * mse.std().item() / math.sqrt(n_tasks)
            out[steps] = {"mse": round(mse.mean().item(), 4), "ci95": round(half, 4)}
    return out


def _num(v: float) -> str:
    """3 decimals, or 'diverged' for the blow-ups of rates reused beyond their step count."""
    return f"{v:.3f}" if math.isfinite(v) and abs(v) < 1e4 else "diverged"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--iterations", type=int, default=70_000, help="meta-training iterations (paper: 70,000)"
    )
    ap.add_argument("--train-k", default="eval", choices=["eval", "5", "10", "20"])
    ap.add_argument("--eval-tasks", type=int, default=600)
    ap.add_argument("--algorithms", default=",".join(ALGOS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--select-every", type=int, default=1000,
        help="keep the snapshot best on validation tasks, checked this often (0: keep the last)",
    )  # fmt: skip
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (small ops: 1 is fastest)"
    )
    ap.add_argument("--quick", action="store_true", help="200 iterations, 100 tasks: a smoke run")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.eval_tasks, args.select_every = 200, 100, 100
    torch.set_num_threads(args.threads)
    algos = [a.strip() for a in args.algorithms.split(",")]
    unknown = sorted(set(algos) - set(ALGOS))
    if unknown:
        ap.error(f"unknown algorithm(s) {unknown}; choose from {ALGOS}")

    results: dict = {"config": {**vars(args), "json": str(args.json), "alpha": ALPHA}, "runs": []}
    train_ks = EVAL_K if args.train_k == "eval" else (int(args.train_k),)
    for algo in algos:
        for tk in train_ks:
            learner, secs, selection = train(
                algo, tk, args.iterations, args.seed, args.select_every
            )
            eval_ks = (tk,) if args.train_k == "eval" else EVAL_K
            for ek in eval_ks:
                alphas = (ALPHA, 0.02) if algo == "pretrain" else (ALPHA,)
                for alpha in alphas:
                    res = evaluate(learner, algo, ek, args.eval_tasks, alpha)
                    results["runs"].append({"algorithm": algo, "train_k": tk, "eval_k": ek,
                                            "alpha": "learned" if algo == "metasgd" else alpha,
                                            "train_seconds": round(secs, 1), **selection, "mse": res})  # fmt: skip
                    print(f"  {algo:>8} train K={tk:<2} eval K={ek:<2} alpha={alpha}: "
                          + "  ".join(f"{s} step {r['mse']:.3f}±{r['ci95']:.3f}" for s, r in res.items())
                          + f"  ({secs:.0f}s training, selected iteration {selection['selected_iteration']})",
                          file=sys.stderr, flush=True)  # fmt: skip

    # the table
    print(f"\nsine regression, MSE (95% CI) over {args.eval_tasks} tasks; {args.iterations:,} meta-iterations, "
          f"meta-trained at K={'evaluation K' if args.train_k == 'eval' else args.train_k}, "
          f"{'snapshot best on validation tasks every ' + str(args.select_every) if args.select_every else 'last snapshot'}")  # fmt: skip
    head = f"{'method':<22}{'K':>3}" + "".join(
        f"{f'{s} step' + ('s' if s > 1 else ''):>18}" for s in EVAL_STEPS
    )
    print(head + f"{'paper (5-shot)':>22}")
    for r in results["runs"]:
        label = r["algorithm"] + (f" (alpha {r['alpha']})" if r["algorithm"] == "pretrain" else "")
        cells = "".join(
            f"{_num(r['mse'][s]['mse']):>10} ±{_num(r['mse'][s]['ci95']):<6}" for s in EVAL_STEPS
        )
        paper = PAPER.get(r["algorithm"], {}) if r["eval_k"] == 5 else {}
        ref = " / ".join(f"{paper[s]:.2f}" for s in EVAL_STEPS if s in paper)
        print(f"{label:<22}{r['eval_k']:>3}{cells}{ref:>22}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
