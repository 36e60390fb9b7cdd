"""The client: composition root, use cases, retrying, the streaming pipeline, image unlocking.

May import ``splitvault.adapters`` and ``splitvault.domain``; never the server, the CLI or tools.
``bootstrap`` builds adapters and nothing else; use cases take ports.
"""
