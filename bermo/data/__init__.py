"""Data for the ``bermo`` command line: text-classification sets (GLUE or local files) and probing tasks.

Light to import: ``datasets`` is imported inside the functions that need it, not here.
"""
from .text_classification import (
    GLUE_TASKS,
    TextClassificationData,
    load_text_classification,
    majority_fraction,
    tokenize,
)

__all__ = [
    "GLUE_TASKS",
    "TextClassificationData",
    "load_text_classification",
    "majority_fraction",
    "tokenize",
]
