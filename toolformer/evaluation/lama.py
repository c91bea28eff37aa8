"""LAMA facts: read in ``toolformer.tasksets.lama`` (below the corpus and the tools' benchmarks that use them)."""

from toolformer.tasksets.lama import GOOGLE_RE, Fact, google_re_facts, trex_facts  # noqa: F401
