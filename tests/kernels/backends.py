"""The kernel backends that load here, for tests that run on each of them."""

from __future__ import annotations

from expo_stream.errors import BackendUnavailableError
from expo_stream.kernels import BACKENDS, load_backend


def _available() -> list[str]:
    found = []
    for name in BACKENDS:
        try:
            load_backend(name)
        except BackendUnavailableError:
            continue
        found.append(name)
    return found


AVAILABLE = _available()
