"""The math experiment (docs/math.md): what only it has: its report from the stored runs (``report``), its goals
and verdicts (``goals``), why a goal is missed, read from the item rows (``diagnosis``), and the generated page
(``page``)."""
