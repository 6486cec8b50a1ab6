"""Fixtures for the dav tests (filled in by that area)."""
