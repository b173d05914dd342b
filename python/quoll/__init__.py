"""quoll: run unmodified Wallaroo Python applications on one or many workers.

The `wallaroo` package beside this one is the API apps import; this package
holds the worker, the command-line tools and the Rust engine (`quoll._engine`).
"""
