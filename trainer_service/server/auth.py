"""Bearer-token auth: every call must carry `authorization: Bearer <token>` metadata.

Health checks are exempt, so load balancers and Kubernetes probes need no secret.
"""

from __future__ import annotations

import hmac

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is not None and handler.response_streaming and not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer)
    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            lambda it, context: abort(None, context), handler.request_deserializer,
            handler.response_serializer)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            lambda it, context: abort(None, context), handler.request_deserializer,
            handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort, handler.request_deserializer if handler else None,
        handler.response_serializer if handler else None)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without the right bearer token with UNAUTHENTICATED."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("token: must not be empty")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization")
        if given is None:
            return _deny(continuation(handler_call_details),
                         "missing `authorization: Bearer <token>` metadata")
        if not hmac.compare_digest(str(given).encode(), self._expected):
            return _deny(continuation(handler_call_details), "invalid token")
        return continuation(handler_call_details)
