"""Kilo: a multi-cloud network overlay built on WireGuard, for Kubernetes."""

__version__ = "0.1.0"
