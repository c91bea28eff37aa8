"""Job entry points: thin shells over the toolformer library, one per job."""
