import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite runs on two pytest-xdist workers (pyproject's addopts), each with torch's OpenMP
# threads: spinning ones (libgomp's default) burn the core the other worker needs. Read when torch
# loads libgomp, so before any import of torch here and in the processes the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from tiny_models import make_tiny_model_dir, write_text_corpus  # noqa: E402

# no per-example deadline: beside the other worker's torch, an example can take a slow moment
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A small random Llama (L0 = 32, 8 rotary freqs) with a real BPE tokenizer."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def text_corpus_dir(tmp_path_factory):
    """12 .txt documents of real prose (State of the Union addresses)."""
    return write_text_corpus(tmp_path_factory.mktemp("corpus"), 12)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LONGROPE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, declaring 2 GPUs so GPU scheduling runs on CPU."""
    ray = pytest.importorskip("ray")
    # "local": our own Ray even where a `ray start` cluster runs on this machine (plain init joins it)
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
