"""Coverage-guided fuzzing of the safetensors header parser with atheris (libFuzzer).

    pip install atheris
    python bench/fuzz_header.py -atheris_runs=2000000 -max_len=4096 bench/fuzz-corpus

Each input is used as a whole file: its bytes are the file's first bytes and its length the
file's size. The parser must return a header whose every tensor lies inside the file, or raise
FormatError; any other exception, or a tensor range past the end, is a crash. The suite runs a
short hypothesis version of the same property (tests/format/test_safetensors.py).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from expo_stream.errors import FormatError
    from expo_stream.format.safetensors import parse_header


def one_input(data: bytes) -> None:
    try:
        header = parse_header("fuzz.safetensors", data, len(data))
    except FormatError:
        return
    for t in header.tensors:
        if not (header.data_start <= t.start <= t.end <= len(data)):
            raise AssertionError(f"tensor {t.name} range [{t.start}, {t.end}) outside {len(data)}")


def seeds() -> list[bytes]:
    body = (b'{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],'
            b'"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}')
    return [len(body).to_bytes(8, "little") + body + b"\0" * 12]


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        from pathlib import Path

        folder = Path(corpus[0])
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.iterdir()):
            for i, seed in enumerate(seeds()):
                (folder / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
