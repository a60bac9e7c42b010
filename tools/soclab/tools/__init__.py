"""soclab on the operator's machine: the ``soclab`` command and the functions behind it."""
