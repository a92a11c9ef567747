"""Vector envs: N instances of a remote env as one gymnasium VectorEnv.

Agent side: `agent` (PortalVectorEnv, one server) and `multiserver` (make_vec, one
VectorEnv over many servers). Env side: `shard` (instances stepped one after
another), `workers` (forked processes that each step a shard), `batchmem` (the
batch they write into), `asyncsteps` (EnvPool-style send/recv).
"""
