"""python -m bench.rd: the rate-distortion protocol (see bench/rd/__init__.py)."""
import sys

from bench.rd.cli import main

sys.exit(main())
