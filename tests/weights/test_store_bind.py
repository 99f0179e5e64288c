"""The weight store listens on the learner's own address, never on every interface unless that is asked for."""

import psutil

from gspo_async.weights.elastic import WeightPublisher


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_loopback_learner_store_listens_on_loopback_only():
    publisher = WeightPublisher("127.0.0.1", 0, timeout_s=5.0, bucket_bytes=1 << 20)
    try:
        assert listening_addresses(publisher.port) == {"127.0.0.1"}
    finally:
        publisher.close()


def test_wildcard_only_when_asked():
    publisher = WeightPublisher("0.0.0.0", 0, timeout_s=5.0, bucket_bytes=1 << 20)
    try:
        assert listening_addresses(publisher.port) == {"0.0.0.0"}
    finally:
        publisher.close()
