"""Runnable examples that build models users recognise (never committed: see each module's licence note)."""
