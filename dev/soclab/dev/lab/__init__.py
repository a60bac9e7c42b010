"""``make lab``: the whole pipeline on one machine, with a live view."""
