"""Snapshot + attribution -> the exposition and the status page."""
