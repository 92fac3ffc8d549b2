"""The manifest: which output shards are complete, proven by the digests of what was written.

Every chunk the executor writes is hashed (XXH3-128) from the buffer it came from; when all
chunks of a shard are on disk and synced, the shard's size and its list of
``[offset, length, digest]`` ranges go into ``expo_manifest.json``, replaced atomically. A
resumed merge reuses a shard only when the manifest lists it and re-reading those ranges gives
the same digests; ``expo-stream verify`` checks a finished output the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..errors import FormatError
from .writer import replace_file

MANIFEST_NAME = "expo_manifest.json"


def digest(data) -> str:
    """XXH3-128 of a buffer (bytes or a uint8 view), as hex."""
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class ShardRecord:
    size: int
    ranges: list[tuple[int, int, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"size": self.size, "ranges": [list(r) for r in sorted(self.ranges)]}


def check_file(path: Path, record: dict) -> str | None:
    """None if ``path`` has the recorded size and range digests, else what differs."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != record["size"]:
        return f"size {size} != recorded {record['size']}"
    bad = differing_ranges(path, record, first_only=True)
    if bad:
        offset, length = bad[0]
        return f"bytes [{offset}, {offset + length}) differ from the recorded digest"
    covered = sum(length for _, length, _ in record["ranges"])
    if covered != size:
        return f"recorded ranges cover {covered} of {size} bytes"
    return None


def differing_ranges(path: Path, record: dict, first_only: bool = False) -> list[tuple[int, int]]:
    """The recorded ``(offset, length)`` ranges whose bytes no longer match their digests."""
    bad = []
    with open(path, "rb") as f:
        for offset, length, want in sorted(record["ranges"]):
            f.seek(offset)
            if digest(f.read(length)) != want:
                bad.append((offset, length))
                if first_only:
                    break
    return bad


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: cannot parse manifest ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("shards"), dict):
        raise FormatError(f"{path}: not an expo-stream manifest")
    return data


def write_manifest(directory: Path, fingerprint: str, shards: dict[str, dict]) -> None:
    """Replace the manifest atomically and durably."""
    data = json.dumps({"fingerprint": fingerprint, "shards": shards}).encode()
    replace_file(Path(directory) / MANIFEST_NAME, data, durable=True)
