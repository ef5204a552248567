from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.inference.testmodel import make_test_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model") / "small.gguf")


@pytest.fixture(scope="session")
def provider(model_path: Path):
    from edge_agent.inference.llama import LlamaProvider
    p = LlamaProvider("small", model_path, n_ctx=2048, seed=0)
    yield p
    p.close()
