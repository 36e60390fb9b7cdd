"""The ``splitvault`` command: argument parsing, commands, progress bars.

On top of every other room. The parser (``main``) imports nothing heavy: each command imports
what it needs when it runs, so ``--help`` and offline commands start fast.
"""
