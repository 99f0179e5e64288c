"""Weight sync learner -> actors: dtype buckets, elastic gloo/NCCL groups, loading into a module."""

from gspo_async.weights.apply import apply_to_module, named_weights
from gspo_async.weights.buckets import Bucket, flatten_bucket, plan_buckets, state_checksum, unflatten_bucket
from gspo_async.weights.elastic import PublishResult, ReceivedWeights, WeightPublisher, WeightSubscriber
from gspo_async.weights.receiver import WeightReceiverThread

__all__ = ["Bucket", "PublishResult", "ReceivedWeights", "WeightPublisher", "WeightReceiverThread",
           "WeightSubscriber", "apply_to_module", "flatten_bucket", "named_weights", "plan_buckets",
           "state_checksum", "unflatten_bucket"]
