"""Tiny checkpoints for end-to-end tests, and reading outputs back tensor by tensor."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy

from expo_stream.demo import llama_shapes
from expo_stream.format.writer import save_checkpoint

DT = {"BF16": np.dtype(ml_dtypes.bfloat16), "F16": np.dtype(np.float16),
      "F32": np.dtype(np.float32)}
RAW = {2: np.uint16, 4: np.uint32}

TINY = {"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 24,
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}


def tiny_pair(root: Path, sft_dtype="BF16", dpo_dtype="BF16", config=TINY, seed=0,
              sft_shard=None, dpo_shard=300, extra=None):
    """SFT in one file (default) and DPO in ~300-byte shards: layouts differ on purpose."""
    rng = np.random.default_rng(seed)
    sft, dpo = {}, {}
    for name, shape in llama_shapes(config).items():
        base = rng.standard_normal(shape).astype(np.float32) * 0.05
        sft[name] = base.astype(DT[sft_dtype])
        dpo[name] = (base + rng.standard_normal(shape).astype(np.float32) * 1e-3).astype(DT[dpo_dtype])
    for name, (s, d) in (extra or {}).items():
        if s is not None:
            sft[name] = s
        if d is not None:
            dpo[name] = d
    save_checkpoint(root / "sft", sft, sft_shard, config)
    save_checkpoint(root / "dpo", dpo, dpo_shard, config)
    return root / "sft", root / "dpo", sft, dpo


def load_all(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of an output directory (index or single file), as raw bytes arrays."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values()))
             if index.exists() else ["model.safetensors"])
    out = {}
    for f in files:
        # safetensors.numpy knows bf16 only as a dtype ml_dtypes provides; load raw via our reader
        out.update(_read(directory / f))
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    from expo_stream.format.dtypes import NUMPY_DTYPES
    from expo_stream.format.safetensors import read_header

    header = read_header(path)
    data = path.read_bytes()
    return {t.name: np.frombuffer(data[t.start:t.end], NUMPY_DTYPES[t.dtype]).reshape(t.shape)
            for t in header.tensors}


def bits(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(RAW.get(a.dtype.itemsize, np.uint8))


def safetensors_loads(directory: Path) -> int:
    """Load every shard with the safetensors library; returns the tensor count."""
    count = 0
    for f in Path(directory).glob("*.safetensors"):
        count += len(safetensors.numpy.load_file(f))
    return count


@contextlib.contextmanager
def two_node_ray_cluster():
    """A local Ray cluster of two nodes (1 CPU, 80 MiB object store each), this process its
    driver; workers import expo_stream from the tree under test."""
    import ray
    from ray.cluster_utils import Cluster

    import expo_stream

    repo = str(Path(expo_stream.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    node = dict(num_cpus=1, object_store_memory=80 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False))
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address, logging_level="WARNING")
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
