"""moor-shim: the per-container process between moord and the OCI runtime."""
