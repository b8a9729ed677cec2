"""``device: auto | cpu | cuda`` for encode, eval, embed, probe and tokenizer training."""

import pytest
import torch

from neurofm.cli import main
from neurofm.devices import resolve_device
from neurofm.errors import NeuroFMError


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    with pytest.raises(NeuroFMError, match="'gpu' is not one of auto, cpu, cuda"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(NeuroFMError, match="torch sees none"):
        resolve_device("cuda")
    code = main(["embed", "--release", str(tmp_path), "--shards", str(tmp_path), "--out", str(tmp_path / "e"), "--device", "cuda"])
    assert code == 1 and "torch sees none" in capsys.readouterr().err
