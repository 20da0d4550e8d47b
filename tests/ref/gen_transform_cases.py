#!/usr/bin/python3
"""gen_transform_cases.py - reference outputs for the C decoder and transforms (PIL + torchvision).

    /usr/bin/python3 tests/ref/gen_transform_cases.py --out DIR

Writes into DIR (created):
    transform_cases.safetensors   read by tests/unit/test_transforms.c:
        rule            I32 [N, 6]  w, h, size, max_size (0 = None), out_w, out_h of the reference's
                                    get_size_with_aspect_ratio (0, 0 when it gives a side < 1;
                                    the C side also refuses sides above 2^20)
        resize.<k>.src  U8 [h, w, 3]  random images; resize.<k>.out U8 [dh, dw, 3] =
                                    PIL Image.resize((dw, dh), BILINEAR) of src, horizontally flipped
                                    first when resize.<k>.flip (I32 [1]) is 1
        tf.params       I32 [M, 16]  per case: in_w, in_h, flip, crop, size1, max1, crop_i, crop_j,
                                    crop_h, crop_w, size2, max2, n_in, n_out, out_w, out_h
        tf.mid          I32 [M, 2]   (w1, h1): the size after the first resize
        tf.<m>.src      U8 [in_h, in_w, 3];  tf.<m>.out U8 [out_h, out_w, 3]
        tf.boxes_in     F32 [sum n_in, 4] xyxy pixels;  tf.labels_in I32 [sum n_in]
        tf.boxes_out    F32 [sum n_out, 4];             tf.labels_out I32 [sum n_out]
      The transform cases run the reference functions hflip / resize / crop (the semantics of
      facebookresearch/detr datasets/transforms.py, on PIL images through torchvision.functional,
      boxes as float32 torch tensors) with EXPLICIT parameters, since the C and Python random
      generators differ: flip; then either resize(size1, max1) or resize(size1, max1) ->
      crop(i, j, h, w) -> resize(size2, max2).
    decode/*.jpg, decode/*.png    small images of every kind (JPEG baseline 4:2:0, 4:4:4,
                                  progressive, grayscale, CMYK; PNG gray 2/8/16-bit, RGB 8/16-bit,
                                  palette + tRNS, gray+alpha, RGBA 8/16-bit)
    decode_ref.safetensors        decode.<file name>: U8 [h, w, 3] = PIL Image.open(f).convert("RGB"),
                                  except png_gray16.png: the high byte of each sample (PIL clips
                                  16-bit gray at 255; our documented choice is the high byte; the
                                  PIL result is stored too as decode.png_gray16.png.pil)

About 18 MB, under 2 seconds. Needs python3-pil, python3-torch, python3-torchvision (Debian).
"""
import argparse
import io
import warnings
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_io import write_safetensors  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The reference transforms (detr.md §3.2), with explicit parameters.

def ref_output_size(w, h, size, max_size):
    """get_size_with_aspect_ratio of the reference `resize`: returns (oh, ow)."""
    if max_size is not None:
        min_original_size = float(min((w, h)))
        max_original_size = float(max((w, h)))
        if max_original_size / min_original_size * size > max_size:
            size = int(round(max_size * min_original_size / max_original_size))
    if (w <= h and w == size) or (h <= w and h == size):
        return (h, w)
    if w < h:
        ow = size
        oh = int(size * h / w)
    else:
        oh = size
        ow = int(size * w / h)
    return (oh, ow)


def ref_hflip(image, boxes):
    w, _ = image.size
    flipped = F.hflip(image)
    boxes = boxes[:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1]) + torch.as_tensor([w, 0, w, 0])
    return flipped, boxes


def ref_resize(image, boxes, size, max_size):
    oh, ow = ref_output_size(image.size[0], image.size[1], size, max_size)
    rescaled = F.resize(image, [oh, ow])
    ratio_w, ratio_h = (float(s) / float(s0) for s, s0 in zip(rescaled.size, image.size))
    boxes = boxes * torch.as_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    return rescaled, boxes


def ref_crop(image, boxes, labels, region):
    i, j, h, w = region
    cropped = F.crop(image, i, j, h, w)
    limit = torch.as_tensor([w, h], dtype=torch.float32)
    c = boxes - torch.as_tensor([j, i, j, i])
    c = torch.min(c.reshape(-1, 2, 2), limit).clamp(min=0)
    keep = torch.all(c[:, 1, :] > c[:, 0, :], dim=1)
    return cropped, c.reshape(-1, 4)[keep], labels[keep]


# ---------------------------------------------------------------------------------------------
# Test images

def photo_like(rng, h, w):
    """Smooth gradients, a few flat shapes with edges, and noise: JPEG-compresses like a photo."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        fx, fy = rng.uniform(0.5, 4, 2) * 2 * np.pi
        img[..., c] = 128 + 60 * np.sin(fx * x / w + rng.uniform(0, 6)) * np.cos(fy * y / h)
    for _ in range(6):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.05, 0.3) * min(w, h)
        m = (x - cx) ** 2 + (y - cy) ** 2 < r * r
        img[m] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def noise(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------

def rule_cases(rng):
    rows = []
    edge = [(640, 480, 800, 1333), (480, 640, 800, 1333), (1333, 1, 800, 1333), (2, 1, 800, 1333),
            (1, 2, 800, 1333), (4, 1, 800, 1333), (3, 2, 800, 1333), (800, 800, 800, 1333),
            (800, 600, 600, None), (600, 800, 600, None), (1000, 1, 400, None), (5, 5, 1, None),
            (2000, 1, 800, 1333), (4000, 3, 800, 1333), (1333, 2, 1333, 1333), (6, 4, 3, 5),
            (3000, 1, 1000, None), (1, 2500, 600, None)]   # above the C side limit of 2^20
    for w, h, s, m in edge:
        rows.append((w, h, s, m))
    # half-way ties of round(max_size * short / long): max_size * short = (k + 0.5) * long
    for long_ in (2, 4, 6, 8, 10, 14, 50, 2000):
        for short in range(1, min(long_, 9)):
            for m in (1333, 213, 101, 7):
                if (2 * m * short) % long_ == 0 and (2 * m * short // long_) % 2 == 1:
                    rows.append((long_, short, 10 ** 6, m))
                    rows.append((short, long_, 10 ** 6, m))
    while len(rows) < 3000:
        w, h = (int(v) for v in rng.integers(1, 3000, 2))
        if rng.random() < 0.3:
            w, h = (int(v) for v in rng.integers(1, 50, 2))
        size = int(rng.choice([96, 112, 128, 400, 480, 500, 512, 600, 800, int(rng.integers(1, 1500))]))
        m = [None, 1333, 213, int(rng.integers(1, 2000))][int(rng.integers(0, 4))]
        rows.append((w, h, size, m))
    out = []
    for w, h, s, m in rows:
        oh, ow = ref_output_size(w, h, s, m)
        if ow < 1 or oh < 1:
            ow = oh = 0
        out.append((w, h, s, 0 if m is None else m, ow, oh))
    return np.array(out, dtype=np.int32)


def resize_cases(rng, tensors):
    # (src w, h, dst w, h, flip, kind)
    specs = [(37, 23, 80, 50, 0, "noise"), (200, 150, 100, 75, 0, "noise"),
             (640, 480, 80, 60, 0, "photo"), (300, 200, 299, 201, 0, "noise"),
             (123, 77, 40, 200, 1, "noise"), (64, 64, 64, 32, 0, "noise"),
             (64, 64, 17, 64, 1, "noise"), (1, 1, 5, 3, 0, "noise"), (5, 3, 1, 1, 0, "noise"),
             (500, 400, 67, 53, 1, "photo"), (50, 40, 150, 120, 0, "photo"),
             (333, 251, 1000, 754, 1, "photo"), (97, 301, 33, 999, 0, "noise"),
             (640, 480, 1066, 800, 0, "photo"), (640, 480, 213, 160, 0, "noise"),
             (801, 599, 97, 71, 1, "noise"), (250, 180, 250, 180, 1, "noise"),
             (16, 1000, 16, 37, 0, "noise")]
    for k, (sw, sh, dw, dh, flip, kind) in enumerate(specs):
        src = photo_like(rng, sh, sw) if kind == "photo" else noise(rng, sh, sw)
        im = Image.fromarray(src, "RGB")
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        out = np.asarray(im.resize((dw, dh), Image.BILINEAR))
        tensors[f"resize.{k}.src"] = src
        tensors[f"resize.{k}.out"] = out
        tensors[f"resize.{k}.flip"] = np.array([flip], dtype=np.int32)
    return len(specs)


def random_boxes(rng, w, h, n):
    """xyxy boxes inside the image, with some degenerate and edge-touching ones."""
    x0 = rng.uniform(0, w, n)
    y0 = rng.uniform(0, h, n)
    x1 = np.minimum(x0 + rng.uniform(0, w / 2, n), w)
    y1 = np.minimum(y0 + rng.uniform(0, h / 2, n), h)
    b = np.stack([x0, y0, x1, y1], 1)
    if n >= 4:
        b[0] = [0, 0, w, h]                 # the whole image
        b[1] = [w / 3, h / 3, w / 3, h / 2]  # zero width
        b[2] = [0, 0, 1, 1]                 # a corner
        b[3] = [w - 2, h - 2, w, h]         # the other corner
    return np.round(b * 4) / 4


def transform_cases(rng, tensors):
    # in_w, in_h, flip, crop, size1, max1, size2, max2, crop (h, w) range
    specs = [
        (160, 120, 0, 0, 128, 213, 0, 0, None), (160, 120, 1, 0, 96, 213, 0, 0, None),
        (120, 160, 1, 0, 112, 130, 0, 0, None), (90, 300, 0, 0, 128, 213, 0, 0, None),
        (160, 120, 0, 1, 100, None, 128, 213, (40, 100)),
        (160, 120, 1, 1, 90, None, 96, 213, (40, 100)),
        (133, 211, 1, 1, 80, None, 112, 150, (30, 80)),
        (300, 90, 0, 1, 60, None, 128, 213, (45, 60)),
        (64, 48, 1, 1, 48, None, 128, 213, (48, 48)),      # the crop keeps everything (i = j = 0)
        (640, 480, 1, 0, 800, 1333, 0, 0, None),
        (640, 480, 0, 1, 500, None, 608, 1333, (384, 600)),
        (200, 150, 0, 0, 150, 1333, 0, 0, None),           # unchanged size (short side == size)
    ]
    params, mids = [], []
    bi, li, bo, lo = [], [], [], []
    for m, (w, h, flip, crop, s1, m1, s2, m2, crange) in enumerate(specs):
        src = photo_like(rng, h, w)
        n = int(rng.integers(4, 12))
        boxes = random_boxes(rng, w, h, n).astype(np.float32)
        labels = rng.integers(1, 91, n).astype(np.int32)
        img = Image.fromarray(src, "RGB")
        b = torch.from_numpy(boxes.copy())
        lab = torch.from_numpy(labels.copy())
        if flip:
            img, b = ref_hflip(img, b)
        img, b = ref_resize(img, b, s1, m1)
        w1, h1 = img.size
        ci = cj = ch = cw = 0
        if crop:
            lo_, hi_ = crange
            cw = int(rng.integers(min(lo_, w1), min(hi_, w1) + 1))
            ch = int(rng.integers(min(lo_, h1), min(hi_, h1) + 1))
            ci = int(rng.integers(0, h1 - ch + 1))
            cj = int(rng.integers(0, w1 - cw + 1))
            img, b, lab = ref_crop(img, b, lab, (ci, cj, ch, cw))
            img, b = ref_resize(img, b, s2, m2)
        out = np.asarray(img)
        params.append([w, h, flip, crop, s1, m1 or 0, ci, cj, ch, cw, s2, m2 or 0, n, len(b),
                       out.shape[1], out.shape[0]])
        mids.append([w1, h1])
        tensors[f"tf.{m}.src"] = src
        tensors[f"tf.{m}.out"] = out
        bi.append(boxes)
        li.append(labels)
        bo.append(b.numpy().astype(np.float32))
        lo.append(lab.numpy().astype(np.int32))
    tensors["tf.params"] = np.array(params, dtype=np.int32)
    tensors["tf.mid"] = np.array(mids, dtype=np.int32)
    tensors["tf.boxes_in"] = np.concatenate(bi)
    tensors["tf.labels_in"] = np.concatenate(li)
    tensors["tf.boxes_out"] = np.concatenate(bo).reshape(-1, 4)
    tensors["tf.labels_out"] = np.concatenate(lo)
    return len(specs)


# ---------------------------------------------------------------------------------------------
# Decode corpus

def png_bytes(w, h, depth, ctype, rows, extra=b""):
    """A minimal PNG writer (filter 0 on every row), so that every colour type and depth PIL
    cannot write (16-bit RGB, 2-bit gray, LA 16) can be produced."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
            + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_corpus(rng):
    w, h = 37, 29
    files = {}
    g8 = rng.integers(0, 256, (h, w), dtype=np.uint8)
    files["png_gray8.png"] = png_bytes(w, h, 8, 0, [r.tobytes() for r in g8])
    g2 = rng.integers(0, 4, (h, w))
    rows = []
    for r in g2:
        v = np.concatenate([r, np.zeros((-len(r)) % 4, dtype=r.dtype)]).reshape(-1, 4)
        rows.append(bytes((v[:, 0] << 6 | v[:, 1] << 4 | v[:, 2] << 2 | v[:, 3]).astype(np.uint8)))
    files["png_gray2.png"] = png_bytes(w, h, 2, 0, rows)
    g16 = rng.integers(0, 65536, (h, w)).astype(">u2")
    files["png_gray16.png"] = png_bytes(w, h, 16, 0, [r.tobytes() for r in g16])
    rgb8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    files["png_rgb8.png"] = png_bytes(w, h, 8, 2, [r.tobytes() for r in rgb8])
    rgb16 = rng.integers(0, 65536, (h, w, 3)).astype(">u2")
    files["png_rgb16.png"] = png_bytes(w, h, 16, 2, [r.tobytes() for r in rgb16])
    pal = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (h, w), dtype=np.uint8)
    trns = b"\x00\x80" + b"\xff" * 14
    extra = (struct.pack(">I", 48) + b"PLTE" + pal.tobytes()
             + struct.pack(">I", zlib.crc32(b"PLTE" + pal.tobytes()) & 0xFFFFFFFF)
             + struct.pack(">I", 16) + b"tRNS" + trns
             + struct.pack(">I", zlib.crc32(b"tRNS" + trns) & 0xFFFFFFFF))
    files["png_palette_trns.png"] = png_bytes(w, h, 8, 3, [r.tobytes() for r in idx], extra)
    la = rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
    files["png_gray_alpha.png"] = png_bytes(w, h, 8, 4, [r.tobytes() for r in la])
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    files["png_rgba8.png"] = png_bytes(w, h, 8, 6, [r.tobytes() for r in rgba])
    rgba16 = rng.integers(0, 65536, (h, w, 4)).astype(">u2")
    files["png_rgba16.png"] = png_bytes(w, h, 16, 6, [r.tobytes() for r in rgba16])
    special = {"png_gray16.png": np.repeat((g16.astype(np.uint32) >> 8).astype(np.uint8)[..., None], 3, 2)}
    return files, special


def jpeg_corpus(rng):
    files = {}
    src = photo_like(rng, 97, 161)   # sizes that are not multiples of the MCU
    im = Image.fromarray(src, "RGB")

    def save(img, **kw):
        b = io.BytesIO()
        img.save(b, "JPEG", **kw)
        return b.getvalue()
    files["jpeg_420_q90.jpg"] = save(im, quality=90)
    files["jpeg_444_q95.jpg"] = save(im, quality=95, subsampling=0)
    files["jpeg_progressive.jpg"] = save(im, quality=85, progressive=True)
    files["jpeg_gray.jpg"] = save(im.convert("L"), quality=90)
    cmyk = Image.fromarray(np.concatenate([src, rng.integers(0, 256, (97, 161, 1), dtype=np.uint8)], 2),
                           "CMYK")
    files["jpeg_cmyk.jpg"] = save(cmyk, quality=92)
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    # PIL warns that a palette image with a tRNS chunk should go through RGBA; convert("RGB")
    # dropping the transparency is exactly what is being recorded
    warnings.filterwarnings("ignore", message="Palette images with Transparency")
    os.makedirs(os.path.join(args.out, "decode"), exist_ok=True)

    tensors = {"rule": rule_cases(rng)}
    n_resize = resize_cases(rng, tensors)
    n_tf = transform_cases(rng, tensors)
    write_safetensors(os.path.join(args.out, "transform_cases.safetensors"), tensors,
                      {"n_resize": str(n_resize), "n_transform": str(n_tf)})

    files = jpeg_corpus(rng)
    png_files, special = png_corpus(rng)
    files.update(png_files)
    ref = {}
    for name, data in sorted(files.items()):
        with open(os.path.join(args.out, "decode", name), "wb") as f:
            f.write(data)
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        if name in special:
            ref[f"decode.{name}.pil"] = pil
            pil = special[name]
        ref[f"decode.{name}"] = pil
    write_safetensors(os.path.join(args.out, "decode_ref.safetensors"), ref,
                      {"files": ",".join(sorted(files))})
    print(f"gen_transform_cases: {len(tensors['rule'])} rule cases, {n_resize} resize cases, "
          f"{n_tf} transform cases, {len(files)} decode files -> {args.out}")


if __name__ == "__main__":
    main()
