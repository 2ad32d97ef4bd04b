"""Temporal workflows of scanward."""
