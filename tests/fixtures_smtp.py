"""Fixtures for the smtp tests (filled in by that area)."""
