"""moord: the Moorage supervisor daemon."""
