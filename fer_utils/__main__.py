"""`python -m fer_utils COMMAND ...`: the same as the `fer` console command (see fer_utils.cli)."""
import sys

from .cli import main

sys.exit(main())
