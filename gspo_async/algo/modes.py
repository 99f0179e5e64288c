"""The algorithm's mode lists, one definition each: the config schema validates against these tuples and the
functions in this package refuse anything else.

This module imports nothing (not even torch), so ``gspo_async.config`` can use it while `gspo-async config check`
and `--help` answer without loading torch; ``gspo_async.algo`` loads its torch modules lazily for the same reason.
"""

ADV_ESTIMATORS = ("reinforce", "grpo")
IMPORTANCE_SAMPLING = ("seq", "token")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
CORRECTIONS = ("behaviour", "decoupled", "recompute")
REWARD_NORMS = (None, "batch", "group", "running")
