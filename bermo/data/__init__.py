"""Data for the ``bermo`` command line: text-classification sets (GLUE or local files) and probing tasks.

Light to import: ``datasets`` is imported inside the functions that need it, not here.
"""
from .probing_tasks import TASKS as PROBING_TASKS
from .probing_tasks import build_probing_tasks, load_probing_task, read_brown
from .text_classification import (
    GLUE_TASKS,
    TextClassificationData,
    load_text_classification,
    majority_fraction,
    tokenize,
)

__all__ = [
    "PROBING_TASKS",
    "build_probing_tasks",
    "load_probing_task",
    "read_brown",
    "GLUE_TASKS",
    "TextClassificationData",
    "load_text_classification",
    "majority_fraction",
    "tokenize",
]
