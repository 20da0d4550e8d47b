#!/usr/bin/python3
"""Writes random linear-assignment problems with scipy's optimal total cost, for tests/unit/test_matcher.c.

Usage: /usr/bin/python3 tests/ref/gen_matcher_cases.py OUT_FILE   (the test reads $DETR_FIXTURES/matcher_cases.bin)

The cases cover what the DETR matcher meets and the solver's hard spots: square, tall (rows > cols, as
100 queries x n targets), wide (rows < cols), empty (0 rows or 0 columns), integer-valued ties, duplicated
rows and columns, constant matrices, negative entries, magnitudes from 1e-6 to 1e9 mixed in one matrix, and
DETR-like costs (5*L1 - p - 2*GIoU).

File format (little-endian):
    char[4] "LSA1", uint32 count, then per case:
    int32 rows, int32 cols, float64 total (scipy.optimize.linear_sum_assignment's optimum),
    float64 cost[rows * cols] row-major.
"""
import os
import struct
import sys

import numpy as np
from scipy.optimize import linear_sum_assignment

SEED = 20240611


def random_shape(rng, kind):
    if kind == "square":
        n = int(rng.integers(1, 41))
        return n, n
    if kind == "tall":
        cols = int(rng.integers(1, 61))
        return int(rng.integers(cols + 1, 121)), cols
    if kind == "wide":
        rows = int(rng.integers(1, 41))
        return rows, int(rng.integers(rows + 1, 81))
    if kind == "small":
        return int(rng.integers(1, 9)), int(rng.integers(1, 9))
    raise ValueError(kind)


def uniform(rng, rows, cols):
    return rng.uniform(-1.0, 1.0, size=(rows, cols))


def integer_ties(rng, rows, cols):
    return rng.integers(0, int(rng.integers(1, 6)), size=(rows, cols)).astype(np.float64)


def duplicated(rng, rows, cols):
    c = rng.integers(-3, 4, size=(rows, cols)).astype(np.float64)
    if rows > 1:
        c[rng.integers(0, rows, size=rows // 2 + 1)] = c[int(rng.integers(0, rows))]
    if cols > 1:
        c[:, rng.integers(0, cols, size=cols // 2 + 1)] = c[:, [int(rng.integers(0, cols))]]
    return c


def large_range(rng, rows, cols):
    mags = 10.0 ** rng.uniform(-6, 9, size=(rows, cols))
    return mags * rng.choice([-1.0, 1.0], size=(rows, cols))


def scaled(rng, rows, cols):
    return uniform(rng, rows, cols) * 10.0 ** float(rng.integers(-6, 10))


def constant(rng, rows, cols):
    return np.full((rows, cols), float(rng.uniform(-5, 5)))


def detr_like(rng, rows, cols):
    """5 * L1(cxcywh) - softmax prob - 2 * GIoU, as the matcher builds it."""
    pred = np.concatenate([rng.uniform(0.1, 0.9, (rows, 2)), rng.uniform(0.02, 0.6, (rows, 2))], 1)
    gt = np.concatenate([rng.uniform(0.1, 0.9, (cols, 2)), rng.uniform(0.02, 0.6, (cols, 2))], 1)
    l1 = np.abs(pred[:, None, :] - gt[None, :, :]).sum(-1)

    def xyxy(b):
        return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)

    a, b = xyxy(pred), xyxy(gt)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    whc = np.clip(np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2]), 0, None)
    enclose = whc[..., 0] * whc[..., 1]
    giou = inter / union - (enclose - union) / enclose
    prob = rng.dirichlet(np.ones(92), size=rows)[:, rng.integers(0, 91, size=cols)]
    return 5 * l1 - prob - 2 * giou


GENERATORS = [uniform, integer_ties, duplicated, large_range, scaled, constant, detr_like]
KINDS = ["square", "tall", "wide", "small"]


def make_cases(rng):
    cases = []
    # Empty problems: no targets (the usual DETR image without boxes), no rows, both empty.
    for rows, cols in [(0, 0), (0, 1), (0, 7), (1, 0), (100, 0), (5, 0)]:
        cases.append(np.zeros((rows, cols)))
    for _ in range(12):  # the DETR shape: 100 queries
        cases.append(detr_like(rng, 100, int(rng.integers(1, 61))))
    for i in range(1050):
        gen = GENERATORS[i % len(GENERATORS)]
        rows, cols = random_shape(rng, KINDS[(i // len(GENERATORS)) % len(KINDS)])
        cases.append(gen(rng, rows, cols))
    return cases


def optimal_total(cost):
    if cost.size == 0:
        return 0.0
    r, c = linear_sum_assignment(cost)
    assert len(r) == min(cost.shape)
    return float(cost[r, c].sum())


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_matcher_cases.py OUT_FILE")
    rng = np.random.default_rng(SEED)
    cases = make_cases(rng)
    os.makedirs(os.path.dirname(os.path.abspath(sys.argv[1])), exist_ok=True)
    with open(sys.argv[1], "wb") as f:
        f.write(b"LSA1" + struct.pack("<I", len(cases)))
        for cost in cases:
            cost = np.ascontiguousarray(cost, dtype="<f8")
            rows, cols = cost.shape
            f.write(struct.pack("<iid", rows, cols, optimal_total(cost)))
            f.write(cost.tobytes())
    print(f"wrote {len(cases)} assignment cases to {sys.argv[1]}")


if __name__ == "__main__":
    main()
