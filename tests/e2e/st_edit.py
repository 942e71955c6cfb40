#!/usr/bin/env python3
"""Small safetensors surgery for the command-line tests (standard library only, no torch).

  st_edit.py ids FILE NAME            print an I64 tensor as comma-separated ids
  st_edit.py drop FILE NAME           rewrite FILE without tensor NAME
  st_edit.py reshape FILE NAME DIMS   rewrite FILE with NAME's shape set to DIMS (e.g. 4,8); bytes kept
  st_edit.py truncate FILE N          cut N bytes off the end
  st_edit.py shape FILE NAME          print NAME's dtype and shape
  st_edit.py fill FILE NAME VALUE     set every element of a float tensor to VALUE (nan, 3e38, ...)
"""
import json
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return header, data[8 + n:]


def write(path, header, tensors):
    # tensors: list of (name, meta, bytes) in order; offsets recomputed.
    out_header, blobs, off = {}, [], 0
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    for name, meta, blob in tensors:
        m = dict(meta)
        m["data_offsets"] = [off, off + len(blob)]
        out_header[name] = m
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(out_header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def entries(header, body):
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    items.sort(key=lambda kv: kv[1]["data_offsets"][0])
    return [(k, v, body[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in items]


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    header, body = read(path)
    if cmd == "ids":
        meta = header[sys.argv[3]]
        b, e = meta["data_offsets"]
        vals = struct.unpack("<%dq" % ((e - b) // 8), body[b:e])
        print(",".join(str(v) for v in vals))
    elif cmd == "shape":
        meta = header[sys.argv[3]]
        print(meta["dtype"], meta["shape"])
    elif cmd == "drop":
        write(path, header, [t for t in entries(header, body) if t[0] != sys.argv[3]])
    elif cmd == "reshape":
        dims = [int(d) for d in sys.argv[4].split(",")]
        ts = []
        for name, meta, blob in entries(header, body):
            if name == sys.argv[3]:
                meta = dict(meta, shape=dims)
            ts.append((name, meta, blob))
        write(path, header, ts)
    elif cmd == "fill":
        # One element in the tensor's own dtype: f32 as is, bf16 its top half, f16 by struct's 'e'.
        x = float(sys.argv[4])
        dtype = header[sys.argv[3]]["dtype"]
        one = {"F32": lambda: struct.pack("<f", x), "BF16": lambda: struct.pack("<f", x)[2:],
               "F16": lambda: struct.pack("<e", x)}[dtype]()
        ts = [(n, m, one * (len(b) // len(one)) if n == sys.argv[3] else b) for n, m, b in entries(header, body)]
        write(path, header, ts)
    elif cmd == "truncate":
        with open(path, "r+b") as f:
            f.seek(0, 2)
            f.truncate(f.tell() - int(sys.argv[3]))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
