"""Exceptions raised by bermo."""


class ConfigurationError(Exception):
    """A module was configured or called inconsistently (AllenNLP's exception of the same name and role)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run on the given tensors."""
