"""``python -m econspin``: the command line, as the ``econspin`` script runs it."""

from econspin.cli import app

app(prog_name="econspin")
