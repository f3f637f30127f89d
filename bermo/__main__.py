"""``python -m bermo``: the ``bermo`` command line (``python -m bermo train --help``)."""
import sys

from bermo.cli.main import main

sys.exit(main())
