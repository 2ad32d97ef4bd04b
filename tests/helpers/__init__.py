"""Helpers shared by the tests (one place for each)."""
