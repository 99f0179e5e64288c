"""gspo-async: asynchronous actor-learner post-training of language models with GSPO."""

__version__ = "0.1.0"
