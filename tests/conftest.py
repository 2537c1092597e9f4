import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """One set of random weights in every layout: diffusers folder, .safetensors (fp32, fp16), .ckpt."""
    import tiny_models

    root = tmp_path_factory.mktemp("checkpoints")
    folder = tiny_models.save_diffusers_folder(root / "tiny-diffusers")
    paths = tiny_models.save_single_files(folder, root)
    paths["diffusers"] = folder
    return paths


@pytest.fixture(scope="session")
def tiny_inpaint_checkpoint(tmp_path_factory):
    import tiny_models

    root = tmp_path_factory.mktemp("inpaint")
    folder = tiny_models.save_diffusers_folder(root / "tiny-inpaint-diffusers", in_channels=9)
    return tiny_models.save_single_files(folder, root, name="tiny-inpainting")["safetensors"]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a shared CPU one thread is many times faster.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
