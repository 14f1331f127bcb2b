from xreflect.backends.base import Backend, GenerationError, Request, Response, create_backend

__all__ = ["Backend", "GenerationError", "Request", "Response", "create_backend"]
