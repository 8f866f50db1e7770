"""Linear probe: multinomial logistic regression on frozen features, in torch (L-BFGS, full batch).

The split is the data's own (a ``split`` column or train/test folders) or a seeded stratified
80/20 one. The L2 penalty is chosen on a validation fifth of the training part from a log grid,
then the probe is refit on the whole training part and scored once on the test part.
Features are standardised with the training part's statistics.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PENALTIES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def stratified_split(labels: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """A boolean mask selecting about ``frac`` of each class (at least one, never all of a class > 1)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(frac * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
        mask[idx[:k]] = True
    return mask


def fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: float, init=None, max_iter: int = 100):
    """Weights and bias minimising mean cross-entropy + ``penalty * ||W||^2`` (from ``init`` if given)."""
    w0, b0 = init if init is not None else (torch.zeros(x.shape[1], n_classes), torch.zeros(n_classes))
    w, b = w0.clone().to(x.dtype).requires_grad_(), b0.clone().to(x.dtype).requires_grad_()
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + penalty * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _accuracy(x, y, wb) -> float:
    w, b = wb
    return float(((x @ w + b).argmax(-1) == y).float().mean())


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, split: np.ndarray | None = None, seed: int = 0
) -> dict:
    """Test top-1 of a logistic-regression probe; ``split`` holds "train"/"test" per row, or None."""
    threads = torch.get_num_threads()
    # Thousands of tiny ops: one thread is several times faster (and the result does not depend on cores).
    torch.set_num_threads(1)
    try:
        return _probe(features, labels, split, seed)
    finally:
        torch.set_num_threads(threads)


def _probe(features: np.ndarray, labels: np.ndarray, split: np.ndarray | None, seed: int) -> dict:
    labels = np.asarray(labels)
    if split is not None:
        test = np.asarray(split) != "train"
    else:
        test = stratified_split(labels, 0.2, seed)
    train = ~test
    if not train.any() or not test.any():
        raise ValueError("the linear probe needs both training and test rows")
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    _, y_all = np.unique(labels, return_inverse=True)
    y = torch.as_tensor(y_all)
    n_classes = int(y.max()) + 1
    xt, yt = x[torch.as_tensor(train)], y[torch.as_tensor(train)]
    val = stratified_split(yt.numpy(), 0.2, seed + 1)
    scores, wb = {}, None
    if val.any() and (~val).any():
        v, f = torch.as_tensor(val), torch.as_tensor(~val)
        for p in sorted(PENALTIES, reverse=True):  # strong to weak, each fit starting from the last
            wb = fit(xt[f], yt[f], n_classes, p, init=wb)
            scores[p] = _accuracy(xt[v], yt[v], wb)
        best = max(PENALTIES, key=lambda p: (scores[p], p))  # ties: the stronger penalty
    else:
        best = 1e-3
    wb = fit(xt, yt, n_classes, best)
    te = torch.as_tensor(test)
    return {
        "top1": _accuracy(x[te], y[te], wb),
        "train_top1": _accuracy(xt, yt, wb),
        "penalty": best,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
    }
