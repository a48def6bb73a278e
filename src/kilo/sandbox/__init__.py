"""The local sandbox: a real multi-cloud Kilo mesh in network namespaces on one machine.

Composition root, beside ``kilo.agent`` and ``kilo.cli``: it may use the adapters and the
pure core, and runs ``kg`` and ``kgctl`` as processes (never imports them). The end-to-end
tests and the agent benchmark build on the same :mod:`kilo.sandbox.testbed` and
:mod:`kilo.sandbox.controlplane`.
"""
