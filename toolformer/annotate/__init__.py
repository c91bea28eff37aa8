"""Annotation: positions, sampling, execution, scoring and filtering (DESIGN §1.2)."""
