import os

# LRN runs eagerly in the tests (subprocesses inherit this), set before anything of alexnet is imported:
# torch.compile specialises it for every new shape, seconds each. test_lrn.py compiles it and checks it
# against the formula (and that it stayed compiled); make demo runs it compiled.
os.environ.setdefault("ALEXNET_COMPILE", "0")
# What every alexnet command sets (runtime.configure_process): inductor trusts the CPU's flags instead of
# compiling a test program per vector extension, 9.6 s of the first compile on a cold cache. Set here for
# the tests that compile in this process (test_lrn) before any command ran in it.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from alexnet.runtime import keep_freed_memory  # noqa: E402
from fixtures import TARBALL  # noqa: E402

# Small, deterministic CPU tests: two threads like CI, a fixed seed per test. Under pytest-xdist
# (make test: -n 2) the cores are shared among the workers, one thread each on a 2-core machine.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))
# The tests' own process allocates like the `alexnet` command does (runtime.keep_freed_memory).
keep_freed_memory()



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One private CIFAR-10 decode cache for the whole session (the user's ~/.cache/alexnet stays
    untouched); yields its folder, also set as ALEXNET_DATA for in-process runs."""
    if not TARBALL.exists():
        pytest.fail(f"CIFAR-10 mirror not found at {TARBALL}; set ALEXNET_MIRROR to the shared data folder")
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALEXNET_DATA", str(cache))
        yield cache


@pytest.fixture
def cuda():
    """A test that runs on a GPU: skipped where none is visible, unless ALEXNET_REQUIRE_CUDA=1 (as
    benchmarks/gpu_check.sh sets), under which a missing GPU fails it."""
    if not torch.cuda.is_available():
        if os.environ.get("ALEXNET_REQUIRE_CUDA") == "1":
            pytest.fail("no CUDA device is visible but ALEXNET_REQUIRE_CUDA=1")
        pytest.skip("needs CUDA")
    return torch.device("cuda")
