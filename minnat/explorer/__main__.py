"""`python -m minnat.explorer`: the same page and flags as `python app.py`."""
import sys

from minnat.explorer import main

sys.exit(main(prog="python -m minnat.explorer"))
