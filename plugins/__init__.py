"""Built-in plugins of moord."""
