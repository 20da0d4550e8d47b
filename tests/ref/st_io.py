"""st_io.py - a minimal safetensors reader/writer in pure Python + numpy.

File layout (https://github.com/huggingface/safetensors, format section):
    8 bytes   little-endian uint64 N = length of the JSON header
    N bytes   JSON header: {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                            ..., "__metadata__": {"<key>": "<string value>", ...}}
              padded with spaces so that 8 + N is a multiple of 8
    rest      the tensor bytes, little-endian, C order; offsets are relative to the start of this part

The writer stores tensors in sorted-name order, contiguous, with no gaps. The reader checks that the
offsets are in bounds, match dtype x shape, and neither overlap nor leave holes.
"""
import json
import struct

import numpy as np

# safetensors dtype name -> numpy dtype (little-endian). BF16 has no numpy type: read as uint16 and
# widened to float32 by read_safetensors.
DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
NUMPY_TO_ST = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}


def _dtype_name(arr):
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    name = NUMPY_TO_ST.get(np.dtype(dt))
    if name is None:
        raise ValueError(f"st_io: numpy dtype {arr.dtype} has no safetensors equivalent; "
                         f"convert it to float32/int64/uint8 first")
    return name


def write_safetensors(path, tensors, metadata=None):
    """Writes dict name -> numpy array (or anything np.asarray accepts) to path.

    metadata: optional dict of str -> str stored under "__metadata__"."""
    names = sorted(tensors)
    header = {}
    blobs = []
    offset = 0
    for name in names:
        if name == "__metadata__":
            raise ValueError("st_io: '__metadata__' is reserved and cannot be a tensor name")
        arr = np.asarray(tensors[name])
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")   # (np.ascontiguousarray would turn a 0-d scalar into shape [1])
        dtype = _dtype_name(arr)
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": dtype, "shape": [int(s) for s in arr.shape],
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"st_io: metadata must map str to str, got {k!r}: {v!r}")
        header["__metadata__"] = dict(metadata)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - (8 + len(hbytes)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)


def read_safetensors(path, with_metadata=False):
    """Reads path -> dict name -> numpy array (BF16 is widened to float32).

    with_metadata=True returns (tensors, metadata_dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the end of the file ({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the JSON header does not parse: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    data = memoryview(raw)[8 + n:]
    spans = []
    out = {}
    for name, info in header.items():
        dtype = info.get("dtype")
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has unknown dtype {dtype!r}")
        shape = tuple(int(s) for s in info["shape"])
        begin, end = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= len(data)):
            raise ValueError(f"{path}: tensor '{name}' offsets [{begin},{end}] outside the data "
                             f"({len(data)} bytes)")
        if end - begin != count * DTYPES[dtype].itemsize:
            raise ValueError(f"{path}: tensor '{name}' has {end - begin} bytes but {dtype}{list(shape)} "
                             f"needs {count * DTYPES[dtype].itemsize}")
        arr = np.frombuffer(data[begin:end], dtype=DTYPES[dtype]).reshape(shape).copy()
        if dtype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(f"{path}: tensor '{name}' starts at {begin}, expected {pos} "
                             f"(overlap or hole in the data section)")
        pos = end
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes after the last tensor")
    return (out, metadata) if with_metadata else out
