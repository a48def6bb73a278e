"""The pure core of Kilo: model, annotation parsing, topology, renderers and plans.

Nothing in this package performs I/O, reads the clock or logs; an import-linter contract
enforces it. Adapters (``kilo.adapters``) and composition roots (``kilo.agent``,
``kilo.cli``) build on it.
"""
