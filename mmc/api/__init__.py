"""One module per REST resource; each exposes ``routes``."""
