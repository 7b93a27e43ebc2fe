"""The errors onnxplain raises. Each says what was wrong and what to do next."""

from __future__ import annotations


class OnnxplainError(Exception):
    """Base class of every error onnxplain raises on purpose."""


class ModelLoadError(OnnxplainError):
    """The model could not be read or is not a model onnxplain can explain."""


class BackendCapabilityError(OnnxplainError):
    """The chosen backend lacks a capability the method needs (e.g. gradients)."""


class UnsupportedOperatorError(BackendCapabilityError):
    """A backend cannot run some operators of the model (so it lacks, for this model, the
    capability a method needs: ``except BackendCapabilityError`` catches both).

    ``operators`` lists them as ``"OpType-version"`` strings (e.g. ``"Shrink-9"``).
    """

    def __init__(self, message: str, operators: list[str] | None = None) -> None:
        super().__init__(message)
        self.operators = list(operators or [])


class InputValidationError(OnnxplainError, ValueError):
    """An argument passed by the user is invalid; the message names it."""


class LayerNotFoundError(OnnxplainError, KeyError):
    """A layer (tensor) name does not exist, or no layer fits ``"auto"``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ExportError(OnnxplainError):
    """An adapter could not export a model, or the export disagrees with the original."""
