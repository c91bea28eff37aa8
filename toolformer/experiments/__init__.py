"""Experiments over the jobs: rounds of annotate → merge → finetune → evaluate (``bootstrap``), seeds x settings
x rounds run as resumable units (``experiment``) with a time plan (``plan``), the rounds' report
(``round_report``), the statistics and paired tests reports share (``stats``, ``paired``). What is specific to one
experiment lives in its own package (``math/``). This layer sits above the jobs' libraries (annotate, train,
evaluation, cstar, prepare) and below ``jobs/``."""
