"""Corpus → fixed-size Parquet shards of texts with an immutable manifest: in one loop in this process
(``local``: tiny corpora, the reference) or as Ray tasks (``distributed``, which runs the ``tasks``); both write
the same shards and manifest."""
