"""Images of moord: OCI content store, imports, snapshots and container root copies.

``ImageStore`` is synchronous; moord calls it from a thread executor.
"""

from ._db import Image
from ._store import ImageStore

__all__ = ["Image", "ImageStore"]
