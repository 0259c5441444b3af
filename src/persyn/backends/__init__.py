from persyn.backends.base import (
    Backend,
    GenParams,
    GenRequest,
    GenResult,
    backend_kinds,
    generation_key,
    make_backend,
    register_backend,
)

__all__ = ["Backend", "GenParams", "GenRequest", "GenResult", "backend_kinds", "generation_key", "make_backend",
           "register_backend"]
