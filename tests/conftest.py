import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_MEMORY_DATA", REPO_ROOT.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR}; set HF_MEMORY_DATA to ../shared/data")
    return DATA_DIR


@pytest.fixture(scope="session")
def squad_small_file(data_dir) -> Path:
    return data_dir / "squad_v2" / "dev-v2.0-first5articles.json"


@pytest.fixture(scope="session")
def xlnet_tokenizer_dir(tmp_path_factory, squad_small_file) -> Path:
    """A 600-piece XLNet-style tokenizer trained offline once per session (no memory tokens)."""
    from hf_memory import train_xlnet_tokenizer

    directory = tmp_path_factory.mktemp("xlnet_tokenizer")
    train_xlnet_tokenizer([squad_small_file], vocab_size=600, model_max_length=512).save_pretrained(directory)
    return directory
