"""Megatron-Core's own indexed_dataset module (PyPI megatron-core, installed --no-deps by
launch/setup-reference), for tests/e2e/ecosystem.sh.

megatron/core/__init__.py pulls in the distributed stack, which needs a newer PyTorch than Debian's
1.13; the reader and writer themselves need only numpy, torch and one logging helper. So the
package directory is entered without running its __init__ files' imports, and that helper alone
is stood in for. The IndexedDatasetBuilder and IndexedDataset that run are Megatron's, unchanged.

  megatron_io.py write JOBS_JSON     writes each job's PREFIX.bin/.idx; JOBS_JSON is a file holding
                                    [{"prefix": P, "dtype": "uint8" | "int64" | ..., "documents": [[...], ...]}]
  megatron_io.py read PREFIX        prints {"dtype", "documents": [[...], ...]}
Exit 77 when megatron-core is not installed.
"""
import importlib.util
import json
import logging
import os
import sys
import types


def load():
    spec = importlib.util.find_spec("megatron")
    if spec is None or not spec.submodule_search_locations:
        print("megatron-core is not installed for", sys.executable, "(launch/setup-reference)")
        sys.exit(77)
    core = os.path.join(list(spec.submodule_search_locations)[0], "core")
    pkg = types.ModuleType("megatron.core")
    pkg.__path__ = [core]
    sys.modules["megatron.core"] = pkg
    utils = types.ModuleType("megatron.core.utils")
    utils.log_single_rank = lambda logger, *args, rank=0, **kwargs: logger.log(*args, **kwargs)
    sys.modules["megatron.core.utils"] = utils
    logging.getLogger("megatron").setLevel(logging.WARNING)
    import megatron.core.datasets.indexed_dataset as m  # noqa: E402
    return m


def main():
    import numpy as np

    m = load()
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == "write":
        for job in json.load(open(arg)):
            dtype = getattr(np, job["dtype"])
            b = m.IndexedDatasetBuilder(job["prefix"] + ".bin", dtype=dtype)
            for d in job["documents"]:
                b.add_document(np.array(d, dtype=dtype), [len(d)])
            b.finalize(job["prefix"] + ".idx")
    elif cmd == "read":
        ds = m.IndexedDataset(arg)
        docs = [ds[i].tolist() for i in range(len(ds))]
        print(json.dumps({"dtype": ds.index.dtype.__name__, "documents": docs}))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
