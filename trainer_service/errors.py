"""Errors the training service raises on purpose; the gRPC edge maps each to one status.

Domain code raises these and never builds a status itself (one interceptor-like mapping
in the servicer turns them into `google.rpc.Status` with the offending field named).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `code` is the gRPC status name, `field` the request field at fault."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str = ""):
        self.message, self.field = message, field
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(ServiceError):
    """A request value is wrong; every problem found is listed in `problems`."""

    code = "INVALID_ARGUMENT"

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)  # (field, message)
        field, message = self.problems[0]
        if len(self.problems) > 1:
            message += f" (and {len(self.problems) - 1} more problem(s))"
        super().__init__(message, field)


class PermissionDenied(ServiceError):
    """A path leads outside the server's data roots."""

    code = "PERMISSION_DENIED"


class NotFound(ServiceError):
    """No job has the id asked for."""

    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    """A request_id was reused with a different spec."""

    code = "ALREADY_EXISTS"


class Unavailable(ServiceError):
    """The server is draining and accepts no new jobs."""

    code = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    """Every slot for a kind of call is taken (open WatchJob streams)."""

    code = "RESOURCE_EXHAUSTED"
