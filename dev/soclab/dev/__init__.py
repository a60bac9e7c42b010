"""soclab's development tooling: local servers, the simulated lab and ``make lab``.

Installed only in the development environment (``requirements/dev.txt``): the Pi and the
server never carry it.
"""
