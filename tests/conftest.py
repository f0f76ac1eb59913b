import importlib.util

import numpy as np
import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def cuda_available() -> bool:
    """A CUDA device the runtime can use (built with CUDA, a driver and a GPU present)."""
    try:
        from nfd_rt import _core

        return bool(_core.cuda_available())
    except (ImportError, AttributeError):
        return False


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        # The marker itself, not item.keywords: keywords also hold the names of parent nodes, so a checkout in a
        # folder named "cuda" would skip everything.
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def tiny_config(**changes):
    import nfd_rt

    return nfd_rt.configs.get("tiny").replace(**changes)


@pytest.fixture(scope="session")
def tiny_model():
    if not HAVE_TORCH:
        pytest.skip("needs torch (the `torch` extra)")
    from nfd_rt.reference import NFDModel

    return NFDModel(tiny_config(), init_seed=0)


@pytest.fixture(scope="session")
def tiny_nfd(tmp_path_factory, tiny_model):
    """A random tiny model exported to a .nfd file (window 8, 1 sink frame)."""
    import nfd_rt

    path = tmp_path_factory.mktemp("models") / "tiny.nfd"
    nfd_rt.export.save(tiny_model, path)
    return path


def random_actions(count, dim, seed=0):
    return np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def one_torch_thread():
    """PyTorch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): small
    reference models gain nothing from two threads, and lose a lot on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
