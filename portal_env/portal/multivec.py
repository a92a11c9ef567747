"""The old home of make_vec over many servers, kept for `from portal_env.portal.multivec
import make_vec` (earlier READMEs); the code is in vector.multiserver."""

from .vector.multiserver import (  # noqa: F401
    Endpoint,
    MultiServerVectorEnv,
    make_vec,
    registered_endpoints,
)
