"""The operator's side of runs: the run file and its step language, compiled to the run document
(``soclab.run/1``) that the Pi's run controller executes; the ``soclab run`` command."""
