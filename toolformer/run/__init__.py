"""A run's state on its store, what every job's driver and tasks share: the run directory (``store``), its
manifest, shard markers, failures and quarantine (``shards``), the committed parts readers follow (``parts``),
the one-driver lease and its fence (``lease``), the conditional writes they rest on, per store (``conditional/``),
and the fault points the recovery tests use (``faults``). Nothing here knows of annotation, training, evaluation
or experiments (``pyproject.toml``'s import contracts)."""
