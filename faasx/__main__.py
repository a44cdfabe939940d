"""``python -m faasx``: the ``faasx`` command (``faasx.cli``)."""
import sys

from faasx.cli import main

sys.exit(main())
