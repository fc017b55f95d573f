"""Model actors: one class per model family; each loads its weights once and exposes one typed `__call__`."""
