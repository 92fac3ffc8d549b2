"""The threaded executor: shard after shard in this process, each over a pool of threads."""

from __future__ import annotations

from typing import Callable, Sequence

from ..format.files import InputFile
from ..sources import finish_inputs
from .shard import ShardTask, compute_shard


class ThreadedExecutor:
    """Runs each :class:`ShardTask` here, one after another, with ``task.threads`` threads.

    Shards run one at a time because one shard already keeps every thread and the disk busy
    (its chunks run in parallel); the default executor of :func:`~expo_stream.write_plan`.
    """

    def run(self, tasks: Sequence[ShardTask],
            on_shard_done: Callable[[int, tuple[dict, ...]], None],
            progress: Callable[[int], None] | None = None) -> None:
        for task in tasks:
            on_shard_done(task.index, compute_shard(task, progress))

    def check_inputs(self, files: Sequence[InputFile]) -> None:
        """The streams this process read hashed every file: read what is left and compare."""
        finish_inputs(files)

    def verified(self, file: InputFile) -> bool:
        if file.source != "hub":
            return True
        from ..sources.hub import STREAMS

        return STREAMS.verified(file)
