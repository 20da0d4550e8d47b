#!/usr/bin/python3
"""PyTorch side of the loader benchmark: a torch.utils.data.DataLoader running the reference DETR
train (or val) transform in Python with PIL + torchvision (Debian's python3-torchvision), over a
COCO-format dataset, as the reference's datasets/coco.py and datasets/transforms.py do
(detr.md section 3.2): PIL RGB decode; drop crowd, xywh -> xyxy, clamp, drop degenerate boxes;
RandomHorizontalFlip(0.5); RandomSelect(RandomResize(scales, max_size),
Compose(RandomResize(resize_choices), RandomSizeCrop(crop_min, crop_max),
RandomResize(scales, max_size))); ToTensor; Normalize (boxes to normalised cxcywh); batches
padded to the largest H and W with a mask (nested_tensor_from_tensor_list).

Measured like `detr-data bench`: shuffled epochs, drop_last for training, a consumer that takes
each batch and drops it; images/s counts the images after the first batch over the time after
the first batch (so worker start-up is excluded, epoch boundaries are not). Prints one JSON
object. Run with /usr/bin/python3."""
import argparse
import glob
import json
import os
import random
import resource
import sys
import time

import PIL.Image
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from torch.utils.data import DataLoader, Dataset

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------------------------
# Dataset (CocoDetection + ConvertCocoPolysToMask)

class CocoBoxes(Dataset):
    def __init__(self, ann_file, img_dir, transform):
        with open(ann_file) as f:
            coco = json.load(f)
        self.img_dir = img_dir
        self.images = coco["images"]
        by_image = {}
        for a in coco.get("annotations", []):
            by_image.setdefault(a["image_id"], []).append(a)
        self.anns = [by_image.get(im["id"], []) for im in self.images]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        info = self.images[idx]
        img = PIL.Image.open(os.path.join(self.img_dir, info["file_name"])).convert("RGB")
        w, h = img.size
        anns = [a for a in self.anns[idx] if a.get("iscrowd", 0) == 0]
        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        target = {"boxes": boxes[keep], "labels": labels[keep], "image_id": torch.tensor([info["id"]]),
                  "orig_size": torch.as_tensor([h, w]), "size": torch.as_tensor([h, w])}
        return self.transform(img, target)


# ---------------------------------------------------------------------------------------------
# The reference transforms (image + target)

def hflip(img, target):
    w, _ = img.size
    target = dict(target)
    b = target["boxes"]
    target["boxes"] = b[:, [2, 1, 0, 3]] * torch.as_tensor([-1, 1, -1, 1]) + torch.as_tensor([w, 0, w, 0])
    return F.hflip(img), target


def size_with_aspect_ratio(image_size, size, max_size=None):
    w, h = image_size
    if max_size is not None:
        min_orig, max_orig = float(min(w, h)), float(max(w, h))
        if max_orig / min_orig * size > max_size:
            size = int(round(max_size * min_orig / max_orig))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize(img, target, size, max_size=None):
    oh, ow = size_with_aspect_ratio(img.size, size, max_size)
    rescaled = F.resize(img, [oh, ow])  # PIL bilinear (torchvision's default for PIL images)
    rw, rh = rescaled.size[0] / img.size[0], rescaled.size[1] / img.size[1]
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.as_tensor([rw, rh, rw, rh])
    target["size"] = torch.tensor([oh, ow])
    return rescaled, target


def crop(img, target, region):
    i, j, h, w = region
    target = dict(target)
    target["size"] = torch.tensor([h, w])
    boxes = target["boxes"] - torch.as_tensor([j, i, j, i])
    boxes = torch.min(boxes.reshape(-1, 2, 2), torch.as_tensor([w, h], dtype=torch.float32)).clamp(min=0)
    keep = torch.all(boxes[:, 1, :] > boxes[:, 0, :], dim=1)
    target["boxes"] = boxes.reshape(-1, 4)[keep]
    target["labels"] = target["labels"][keep]
    return F.crop(img, i, j, h, w), target


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img, target):
        return hflip(img, target) if random.random() < self.p else (img, target)


class RandomResize:
    def __init__(self, sizes, max_size=None):
        self.sizes, self.max_size = sizes, max_size

    def __call__(self, img, target):
        return resize(img, target, random.choice(self.sizes), self.max_size)


class RandomSizeCrop:
    def __init__(self, min_size, max_size):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, img, target):
        w = random.randint(self.min_size, min(img.width, self.max_size))
        h = random.randint(self.min_size, min(img.height, self.max_size))
        return crop(img, target, T.RandomCrop.get_params(img, [h, w]))


class RandomSelect:
    def __init__(self, a, b, p=0.5):
        self.a, self.b, self.p = a, b, p

    def __call__(self, img, target):
        return self.a(img, target) if random.random() < self.p else self.b(img, target)


class Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, img, target):
        for s in self.steps:
            img, target = s(img, target)
        return img, target


class ToTensorNormalize:
    def __call__(self, img, target):
        image = F.normalize(F.to_tensor(img), MEAN, STD)
        h, w = image.shape[-2:]
        target = dict(target)
        b = target["boxes"]
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0],
                              b[:, 3] - b[:, 1]], dim=-1) if len(b) else b
        target["boxes"] = cxcywh / torch.tensor([w, h, w, h], dtype=torch.float32)
        return image, target


def make_transform(kind, scales, max_size, resize_choices, crop_min, crop_max, val_size):
    if kind == "val":
        return Compose([RandomResize([val_size], max_size=max_size), ToTensorNormalize()])
    return Compose([
        RandomHorizontalFlip(),
        RandomSelect(
            RandomResize(scales, max_size=max_size),
            Compose([RandomResize(resize_choices), RandomSizeCrop(crop_min, crop_max),
                     RandomResize(scales, max_size=max_size)])),
        ToTensorNormalize(),
    ])


def collate(batch):
    """nested_tensor_from_tensor_list: pad to the largest H and W, mask True on padding."""
    images, targets = zip(*batch)
    H = max(im.shape[1] for im in images)
    W = max(im.shape[2] for im in images)
    out = torch.zeros(len(images), 3, H, W)
    mask = torch.ones(len(images), H, W, dtype=torch.bool)
    for k, im in enumerate(images):
        out[k, :, :im.shape[1], :im.shape[2]].copy_(im)
        mask[k, :im.shape[1], :im.shape[2]] = False
    return out, mask, list(targets)


def seed_worker(worker_id):
    random.seed(torch.initial_seed() % 2**32)


# ---------------------------------------------------------------------------------------------

def find_split(root, split):
    anns = sorted(glob.glob(os.path.join(root, "annotations", f"instances_{split}*.json")))
    dirs = sorted(d for d in glob.glob(os.path.join(root, f"{split}*")) if os.path.isdir(d))
    if not anns or not dirs:
        sys.exit(f"error: {root}: no annotations/instances_{split}*.json or {split}*/ folder")
    return anns[0], dirs[0]


def ints(s):
    return [int(x) for x in s.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", help="folder with annotations/instances_<split>*.json and <split>*/")
    ap.add_argument("--ann")
    ap.add_argument("--images")
    ap.add_argument("--split")
    ap.add_argument("--transform", default="train", choices=["train", "val"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=0, help="batches per epoch (0 = whole epoch)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--scales", type=ints, default=list(range(480, 801, 32)))
    ap.add_argument("--max-size", type=int, default=1333)
    ap.add_argument("--resize-choices", type=ints, default=[400, 500, 600])
    ap.add_argument("--crop", type=ints, default=[384, 600])
    ap.add_argument("--val-size", type=int, default=800)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    if args.ann and args.images:
        ann, img_dir = args.ann, args.images
    elif args.dataset:
        ann, img_dir = find_split(args.dataset, args.split or args.transform)
    else:
        sys.exit("error: give a DATASET folder or --ann FILE --images DIR")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    tf = make_transform(args.transform, args.scales, args.max_size, args.resize_choices,
                        args.crop[0], args.crop[1], args.val_size)
    ds = CocoBoxes(ann, img_dir, tf)
    train = args.transform == "train"
    loader = DataLoader(ds, batch_size=args.batch, shuffle=train, drop_last=train,
                        num_workers=args.workers, collate_fn=collate, worker_init_fn=seed_worker)
    start = time.perf_counter()
    first = None
    images = steady_images = batches = 0
    epoch_ips = []
    for epoch in range(args.epochs):
        t0, n0 = time.perf_counter(), images
        for k, (imgs, mask, targets) in enumerate(loader):
            if first is None:
                first = time.perf_counter()
            else:
                steady_images += imgs.shape[0]
            images += imgs.shape[0]
            batches += 1
            if args.batches and k + 1 >= args.batches:
                break
        epoch_ips.append((images - n0) / (time.perf_counter() - t0))
    end = time.perf_counter()
    steady_s = end - (first if first is not None else start)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({
        "implementation": "pytorch", "torch": torch.__version__, "pil": PIL.__version__,
        "workers": args.workers, "batch": args.batch, "transform": args.transform,
        "images": images, "batches": batches, "seconds": end - start,
        "images_per_s": steady_images / steady_s if steady_s > 0 else 0.0,
        "images_per_s_with_startup": images / (end - start),
        "epoch_images_per_s": epoch_ips,
        "peak_rss_bytes": self_rss, "peak_rss_worker_bytes": child_rss,
    }))


if __name__ == "__main__":
    main()
