"""Runs on the Pi: executing a run document with safety enforced here, not in the datacenter.

``engine`` is the run's logic without I/O (injected clock, readings and controls); ``control``
is what each instrument's publisher enforces for itself (the lease and its guard, command
expiry, the safe state). See the README's "Runs" section for the safety architecture.
"""
