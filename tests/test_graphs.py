"""CUDA-graph replay gives the same results as direct calls (runs only where CUDA is available)."""

import pytest
import torch

from preim3d.networks.graphs import CUDAGraphed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_replay_matches_direct_calls_per_shape_and_does_not_alias():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)
    ).cuda()
    graphed = CUDAGraphed(net, max_graphs=2)
    for shape in [(1, 3, 16, 16), (5, 3, 16, 16), (1, 3, 16, 16), (2, 3, 8, 8)]:
        x = torch.randn(shape, device="cuda")
        with torch.no_grad():
            expected = net(x)
        first = graphed(x)
        second = graphed(torch.randn(shape, device="cuda"))
        assert torch.allclose(first, expected, atol=1e-5)
        assert not torch.equal(first, second)  # the first result survived the next replay
    assert len(graphed._graphs) == 2
