"""The manifest of a merge written into a local (or shared) staging directory.

A merge's output shards are computed anywhere (execute/shard.py); this ledger, kept on the driver
only, records each shard as its records arrive and answers, for a resumed run, which shards are
already complete. A shard counts as complete only when the manifest lists it and re-reading its
recorded byte ranges gives the recorded digests (format/manifest.py), so resume works the same
for every executor.
"""

from __future__ import annotations

import hashlib
import json
import logging

from ..format.manifest import check_file, read_manifest, write_manifest
from ..format.writer import Staging
from ..plan.planner import Plan
from ..version import __version__

log = logging.getLogger(__name__)


class LocalSink:
    """The manifests (one per output subdirectory) of one merge's staging directory.

    Args:
        plan: the plan being written.
        staging: the open (locked) staging directory.
        subdirs: one output subdirectory per schedule (``"."`` for a single one).
    """

    def __init__(self, plan: Plan, staging: Staging, subdirs: list[str]):
        self.plan, self.staging, self.subdirs = plan, staging, list(subdirs)
        self.fingerprint = plan_fingerprint(plan)
        self.records: list[dict[str, dict]] = [{} for _ in self.subdirs]

    def completed(self) -> set[int]:
        """Indices of the shards an interrupted run of the same plan left provably complete.

        Creates the output subdirectories; a staging directory left by a different merge (another
        fingerprint) is emptied.
        """
        manifests = []
        for sub in self.subdirs:
            (self.staging.path / sub).mkdir(parents=True, exist_ok=True)
            manifests.append(read_manifest(self.staging.path / sub))
        if any(m is None or m.get("fingerprint") != self.fingerprint for m in manifests):
            if any(m is not None for m in manifests):
                log.info("staging directory is from a different merge: starting over")
                self.staging.reset()
                for sub in self.subdirs:
                    (self.staging.path / sub).mkdir(parents=True, exist_ok=True)
            return set()
        kept = set()
        for shard in self.plan.shards:
            found = [m["shards"].get(shard.filename) for m in manifests]
            if all(record is not None and check_file(self.staging.path / sub / shard.filename,
                                                     record) is None
                   for sub, record in zip(self.subdirs, found)):
                kept.add(shard.index)
                for k, record in enumerate(found):
                    self.records[k][shard.filename] = record
        return kept

    def shard_done(self, index: int, records: tuple[dict, ...]) -> None:
        """Record a shard, synced by whoever computed it, as complete (one record per subdir)."""
        filename = self.plan.shards[index].filename
        for k, sub in enumerate(self.subdirs):
            self.records[k][filename] = records[k]
            # In plan order, whatever order shards finish in: the same manifest from any executor.
            ordered = {s.filename: self.records[k][s.filename] for s in self.plan.shards
                       if s.filename in self.records[k]}
            write_manifest(self.staging.path / sub, self.fingerprint, ordered)


def plan_fingerprint(plan: Plan) -> str:
    """A digest of everything that decides the output bytes: inputs (id, size, version), layout,
    α. From the plan alone: a changed input gives a different plan, hence another fingerprint."""
    inputs = sorted({f for ck in (plan.sft, plan.dpo) for f in ck.files}, key=lambda f: f.id)
    described = {
        "version": __version__,
        "inputs": [[f.id, f.size, f.version, f.sha256] for f in inputs],
        "shards": [[s.filename, s.header.hex()] for s in plan.shards],
        "tensors": [[t.name, t.alphas, t.dtype, t.dpo.file.id, t.dpo.start,
                     t.sft.file.id if t.sft else None, t.sft.start if t.sft else None]
                    for t in plan.tensors],
    }
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()
