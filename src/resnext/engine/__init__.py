"""Training engine: it receives a model and data; it never builds them."""
