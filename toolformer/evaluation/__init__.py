"""Downstream evaluation: task loaders and lenient scorers (DESIGN §1.6)."""
