"""Shared by the fixture generators: deterministic safetensors writing."""

import collections
import json
import struct

from safetensors.torch import save_file


def save_safetensors(tensors, path, metadata):
    """safetensors' save_file, then rewrite the header with the metadata keys sorted: the Rust writer emits
    __metadata__ in hash-map order, which would make regenerated files differ byte-wise for no reason."""
    save_file(tensors, path, metadata=metadata)
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    canon = collections.OrderedDict([("__metadata__", collections.OrderedDict(sorted(header.pop("__metadata__").items())))])
    canon.update(header)   # tensor entries keep the writer's order and offsets
    text = json.dumps(canon, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])
