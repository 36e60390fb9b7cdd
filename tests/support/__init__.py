"""Reusable test support: servers on loopback and helpers other suites import."""
