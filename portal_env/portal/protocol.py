"""The portal-env protocol's constants, in one home for both env-side servers.

`wire`, `codec` and `server` import them here, and so does the small server
(`portal_env.legacy`) that runs where the package cannot (Python 2.7, 3.5-3.7):
this module is its copy too, so the two cannot drift. Hence no syntax newer than
Python 2.7 and 3.5 (no annotations, no f-strings); `tests/test_legacy_static.py`
holds it to that with vermin.

The handshake, in order:
  server -> agent: MAGIC, a server nonce
  agent -> server: a client nonce, the agent's proof
  server -> agent: ACCEPTED, a features byte, the server's proof (or REFUSED, then close)
A proof is an HMAC-SHA256 keyed by the token over AUTH_PREFIX, the role, (for
the server) the features byte, and both nonces: a proof of one role never serves
as the other's, and the features the agent acts on are the ones the token
holder sent. The token never crosses the wire.
"""

import hashlib
import hmac

# The protocol's name and version, first on the wire. An agent refuses a server whose
# MAGIC differs, and the other way round: an older agent names both versions in its error.
MAGIC = b"PENV4"  # PENV3: no features byte; PENV2: before ring slots; PENV1: one-sided auth
MAGIC_FAMILY = b"PENV"
NONCE_BYTES = 32
DIGEST_BYTES = 32
ACCEPTED, REFUSED = b"OK", b"NO"
AUTH_PREFIX = b"portal-env-auth-3 "
ROLE_AGENT, ROLE_SERVER = b"agent", b"server"

# What a server can do beyond plain general frames, sent (authenticated) at the handshake.
FEATURE_FAST_STEP = 1  # FAST_STEP/FAST_REPLY frames in the layout agreed from the spaces
FEATURE_SHARED_MEMORY = 2  # the share_memory ops: observations through a shared mapping
FEATURE_VECTOR = 4  # make_vec and its async ops (hosted vector envs, worker processes)
FEATURES_ALL = FEATURE_FAST_STEP | FEATURE_SHARED_MEMORY | FEATURE_VECTOR
FEATURES_NONE = 0

# A frame: payload length (u32 little-endian), kind byte, payload.
HEADER_FORMAT = "<IB"
GENERAL, FAST_STEP, FAST_REPLY = 0, 1, 2
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB; larger frames close the connection

# A general frame's payload: u32 structure length (SHARED_FLAG: array data in shared
# memory), the msgpack structure, padding to ALIGN, then each array's bytes padded to ALIGN.
ALIGN = 16
SHARED_FLAG = 1 << 31
# msgpack extension types. An array's data is a dtype tag (length byte + numpy dtype.str),
# ARRAY_TAIL_FORMAT (offset from the data start, number of dimensions), then one u64 per
# dimension; a scalar's is the dtype tag and its bytes; a tuple's and a graph's are a
# nested msgpack list (a graph: [nodes, edges, edge_links]).
EXT_ARRAY, EXT_SCALAR, EXT_TUPLE, EXT_PICKLE, EXT_GRAPH = 1, 2, 3, 4, 5
ARRAY_TAIL_FORMAT = "<QB"

# Requests are [op, *args]; replies [REPLY_OK, result] or [REPLY_ERROR, [type, message,
# traceback]].
REPLY_OK, REPLY_ERROR = 0, 1
# Ops every server answers (reset and step take the single-env forms).
SESSION_OPS = ("ping", "make", "close")
ENV_OPS = ("reset", "step", "render", "call", "get_attr", "set_attr")
# Ops of FEATURE_SHARED_MEMORY and FEATURE_VECTOR.
MEMORY_OPS = ("share_memory", "share_memory_ready")
VECTOR_OPS = ("make_vec", "async_reset", "send", "recv")


def proof(token, role, server_nonce, client_nonce, features=b""):
    """The HMAC one side sends to show it holds token (bytes); see the module docstring."""
    message = AUTH_PREFIX + role + features + server_nonce + client_nonce
    return hmac.new(token, message, hashlib.sha256).digest()
