"""The serving layer's errors: `ServeError` when a server cannot be started (`tunesmith serve`
maps it to an exit code: 2 when the input is at fault, 1 when a valid request failed to come
up), and `ApiError`, a request the in-process app refuses (answered as vLLM answers it).
"""

from __future__ import annotations

# Codes that mean "fix the command line"; every other code is a server that failed to start.
INPUT_ERRORS = frozenset({"model_not_found", "adapter_not_found", "bad_adapter",
                          "adapter_rank_too_large", "adapter_with_gguf", "vllm_not_found",
                          "llama_cpp_not_found", "bad_backend", "port_in_use", "bad_port",
                          "bad_dtype"})


class ServeError(Exception):
    """A server could not be started; `field` names the argument at fault ("" if none)."""

    def __init__(self, code: str, message: str, field: str = ""):
        self.code, self.message, self.field = code, message, field
        where = f"{field}: " if field else ""
        super().__init__(f"{where}{code}: {message}")

    @property
    def bad_input(self) -> bool:
        return self.code in INPUT_ERRORS


class ApiError(Exception):
    """An HTTP request refused, with vLLM's body: {"error": {"message", "type", "code"}}, so a
    client handles either backend the same way (the openai client raises NotFoundError,
    BadRequestError, ... from the status)."""

    TYPES = {400: "BadRequestError", 404: "NotFoundError"}

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "Error"),
                          "code": self.status}}
