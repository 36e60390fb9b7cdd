"""Tools run by the CLI: the end-to-end demo and the benchmark.

May import the client, the server, adapters and domain; the CLI imports them lazily.
"""
