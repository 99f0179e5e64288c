import pytest
import torch

from gspo_async.weights.groups import check_backend


def test_backend_and_device_are_checked():
    assert check_backend("gloo", "cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="one of"):
        check_backend("mpi", "cpu")
    with pytest.raises(ValueError, match="device='cpu'"):
        check_backend("gloo", "cuda:0")
    with pytest.raises(ValueError, match="CUDA device"):
        check_backend("nccl", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_nccl_without_a_gpu_says_so():
    with pytest.raises(RuntimeError, match="use backend='gloo'"):
        check_backend("nccl", "cuda:0")
