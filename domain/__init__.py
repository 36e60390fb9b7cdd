"""The pure core of splitvault: formats, key derivation, split rule and decisions. No I/O here."""
