"""The reference resource API server (Starlette on uvicorn), its store and its operations.

Rooms: ``api`` (the app: ``create_app``, the worker factory), ``routes`` (handlers), ``accounts``
(users and the CDN config as operators set them), ``stores`` (opening the SQLite or PostgreSQL
store, importing the old file layout), ``tokens``, ``throttle``, ``limits``, ``refusals``,
``observe`` (metrics, access log), ``serving`` (``splitvault serve``), ``runner`` (loopback
runner for tests and the demo). Independent of the client: it imports ``splitvault.adapters`` and
``splitvault.domain`` only, so the wire protocol is fixed by ``splitvault.domain.wire`` rather than
by whatever the client happens to send.
"""
