#!/usr/bin/python3
"""Reference results of the matrix-product ops under mixed precision, for tests/unit/test_amp_ops.c.

Usage: amp_ops_ref.py DIR PRECISION   (PRECISION: bf16 or fp16)

Reads DIR/in_<name>.f32 (raw little-endian float32, written by the C test) and writes
DIR/ref_<name>.f32. The cases and their shapes are fixed here and in the test:
  round:  values -> each rounded by torch's conversion to the low type and back
  linear: x [T, In], w [O, In], b [O], dy [T, O] -> y, dx, dw, db
  conv:   x [B, Cin, H, W] (NCHW here; the C side converts from CNHW), w [Cout, Cin, k, k],
          b [Cout], dy [B, Cout, Ho, Wo] -> y, dx, dw, db   (stride 2, padding 1)
  bmm:    a [batch, K, M] (used transposed), b [batch, K, N] -> c = a^T b  [batch, M, N]

bf16 runs PyTorch's own CPU autocast (torch.autocast("cpu", dtype=torch.bfloat16)): F.linear,
F.conv2d and torch.bmm run in bfloat16 there, and their backward computes the input, weight and
bias gradients in bfloat16 before they reach the float32 leaves.
fp16 has no CPU autocast in torch 1.13, so its reference is written out: operands rounded with
tensor.half(), the product in float32, the result rounded with .half() (what a tensor core's
fp16 GEMM with float32 accumulation returns)."""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

T, IN, O = 37, 70, 29
B, CIN, H, W, COUT, K = 2, 5, 9, 11, 6, 3
BATCH, BM, BN, BK = 3, 7, 9, 33


def load(d, name, shape):
    a = np.fromfile(os.path.join(d, "in_%s.f32" % name), dtype="<f4")
    return torch.from_numpy(a.reshape(shape).copy())


def save(d, name, t):
    t.detach().float().contiguous().numpy().astype("<f4").tofile(os.path.join(d, "ref_%s.f32" % name))


def bf16_autocast(d):
    x, w, b = load(d, "lx", (T, IN)), load(d, "lw", (O, IN)), load(d, "lb", (O,))
    dy = load(d, "ldy", (T, O))
    for t in (x, w, b):
        t.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(x, w, b)
    assert y.dtype == torch.bfloat16, y.dtype
    y.backward(dy.to(torch.bfloat16))
    save(d, "ly", y), save(d, "ldx", x.grad), save(d, "ldw", w.grad), save(d, "ldb", b.grad)

    x, w, b = load(d, "cx", (B, CIN, H, W)), load(d, "cw", (COUT, CIN, K, K)), load(d, "cb", (COUT,))
    for t in (x, w, b):
        t.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.conv2d(x, w, b, stride=2, padding=1)
    assert y.dtype == torch.bfloat16, y.dtype
    dy = load(d, "cdy", tuple(y.shape))
    y.backward(dy.to(torch.bfloat16))
    save(d, "cy", y), save(d, "cdx", x.grad), save(d, "cdw", w.grad), save(d, "cdb", b.grad)

    a, bb = load(d, "ga", (BATCH, BK, BM)), load(d, "gb", (BATCH, BK, BN))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = torch.bmm(a.transpose(1, 2), bb)
    assert c.dtype == torch.bfloat16, c.dtype
    save(d, "gc", c)


def fp16_written_out(d):
    r = lambda t: t.half().float()  # noqa: E731
    x, w, b = r(load(d, "lx", (T, IN))), r(load(d, "lw", (O, IN))), r(load(d, "lb", (O,)))
    dy = r(load(d, "ldy", (T, O)))
    save(d, "ly", r(x @ w.t() + b))
    save(d, "ldx", r(dy @ w)), save(d, "ldw", r(dy.t() @ x)), save(d, "ldb", r(dy.sum(0)))

    x, w, b = r(load(d, "cx", (B, CIN, H, W))), r(load(d, "cw", (COUT, CIN, K, K))), r(load(d, "cb", (COUT,)))
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    y = F.conv2d(x, w, b, stride=2, padding=1)
    dy = r(load(d, "cdy", tuple(y.shape)))
    y.backward(dy)
    save(d, "cy", r(y)), save(d, "cdx", r(x.grad)), save(d, "cdw", r(w.grad)), save(d, "cdb", r(b.grad))

    a, bb = r(load(d, "ga", (BATCH, BK, BM))), r(load(d, "gb", (BATCH, BK, BN)))
    save(d, "gc", r(torch.bmm(a.transpose(1, 2), bb)))


def main():
    d, prec = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    v = np.fromfile(os.path.join(d, "in_round.f32"), dtype="<f4")
    low = torch.bfloat16 if prec == "bf16" else torch.float16
    save(d, "round", torch.from_numpy(v.copy()).to(low).float())
    if prec == "bf16":
        bf16_autocast(d)
    elif prec == "fp16":
        fp16_written_out(d)
    else:
        sys.exit("precision must be bf16 or fp16, not %r" % prec)
    print("ok")


if __name__ == "__main__":
    main()
