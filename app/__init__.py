"""The application: rooms with one concern each, wired on top of ``splitvault.adapters``.

- ``client/``: the composition root (``bootstrap``), use cases, the retry loop, the streaming
  pipeline and image unlocking; imports adapters and domain only.
- ``server/``: the reference resource API (Starlette on uvicorn); independent of the client.
- ``cli/``: the ``splitvault`` command: parser, commands, progress bars; on top of everything.
- ``tools/``: the demo and the benchmark; on top of client and server.

The original client's facade (``splitvault.api_client`` and friends) sits above ``client`` at the
top of the package (``app/compat/`` in the repository). import-linter keeps these directions.
"""
