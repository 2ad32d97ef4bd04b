"""The errors the test control plane raises."""

from __future__ import annotations


class ControlPlaneError(RuntimeError):
    pass


class ApiError(ControlPlaneError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
