"""CLI commands for testing the paper's claims: router-eval, train, eval, compare (registered on persyn.cli.app)."""

from __future__ import annotations
