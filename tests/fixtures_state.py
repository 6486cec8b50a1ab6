"""Fixtures for the state tests (filled in by that area)."""
