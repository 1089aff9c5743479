"""pagebuddy: a pKVM-style buddy page allocator over a caller-provided arena.

``Pool`` is the native allocator (a ``no_std`` Rust core behind a thin PyO3 layer);
``ReferencePool`` is a pure-Python model of exactly the same policy, used as the
oracle in differential tests. Both take the same constructor and expose the same
methods, so any code written against one runs against the other.

``conform`` runs any other buddy allocator (a C library exporting the ABI of the header at
``CONFORM_HEADER``, or a program speaking a line protocol) against the same model.
"""

from ._conform import ConformResult, conform
from ._conform_targets import HEADER as CONFORM_HEADER
from ._errors import CorruptionError, OutOfMemory, PageError
from ._frag import Fragmentation
from ._native import Pool, __version__
from ._reference import ReferencePool

__all__ = [
    "CONFORM_HEADER",
    "ConformResult",
    "CorruptionError",
    "Fragmentation",
    "OutOfMemory",
    "PageError",
    "Pool",
    "ReferencePool",
    "__version__",
    "conform",
]
