"""The small env-side server for runtimes whose Python is too old for portal-env (2.7, 3.5-3.7).

Every module here runs on Python 2.7 and 3.5+ with the standard library, numpy and
msgpack; `portal_env.runtimes.legacy_shim` copies them, with `portal.protocol`, into
the `portal_env` package such a runtime imports (see `package_init`).
"""
