"""The augmented corpus C*: the Arrow steps on one part (``augment``: kept calls inserted into their texts), the
distributed merge over a run (``merge``), its dataset card (``card``) and what it will teach, shown in context
(``inspection``)."""
