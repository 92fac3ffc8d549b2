"""Where output goes: shard files, the manifest that says which are complete, and the commit.

``local`` keeps a merge's manifest in its staging directory on a filesystem (local, or shared by
every node of a cluster); a new kind of output (the Hub, an object store) is one new module with
the same methods: ``completed()`` for resume and ``shard_done()`` as each shard arrives.
"""
