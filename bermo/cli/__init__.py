"""The ``bermo`` command line (``bermo train|eval|probe|make-probing-tasks``); see ``bermo.cli.main``."""
