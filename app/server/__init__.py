"""The reference resource API server (Starlette on uvicorn) and the loopback runner.

Independent of the client: it imports ``splitvault.adapters`` and ``splitvault.domain`` only, so the
wire protocol is fixed by ``splitvault.domain`` rather than by whatever the client happens to send.
"""
