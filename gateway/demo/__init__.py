"""The demo organisation: real back ends started on loopback ports, seeded with sample data."""
