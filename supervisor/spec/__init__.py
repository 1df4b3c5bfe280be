"""OCI runtime config (config.json) generation, loading and validation.

Import the public API from ``supervisor.ocispec``.  The modules here contain its parts.
"""
