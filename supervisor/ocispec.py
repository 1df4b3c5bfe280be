"""OCI runtime config (config.json) for a container: generated, or loaded and validated.

``build_spec`` turns an image config and the options of ``moor run`` into a
config with docker's defaults: the default capability set, masked and
read-only /proc paths, no-new-privileges and no terminal.  ``load_spec_file``
and ``validate_spec`` check a config that the user supplies with ``--spec``.
"""

from supervisor.spec.build import build_spec
from supervisor.spec.environ import merge_env
from supervisor.spec.load import load_spec_file
from supervisor.spec.options import RunOptions, parse_ulimit, parse_volume
from supervisor.spec.rootfs import resolve_user
from supervisor.spec.validate import validate_spec

__all__ = [
    "RunOptions",
    "build_spec",
    "load_spec_file",
    "merge_env",
    "parse_ulimit",
    "parse_volume",
    "resolve_user",
    "validate_spec",
]
