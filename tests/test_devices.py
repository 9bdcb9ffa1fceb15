"""The one --device resolver: auto by default everywhere, a one-line error (exit 2) for a device that is not there."""
import pytest
import torch

from gpt3lab.cli import main
from gpt3lab.devices import resolve_device
from gpt3lab.errors import ConfigError

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_plain_devices():
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"--device 'gpu0' is not a device; use cpu, cuda"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match=r"train.device 'cuda:99'"):
        resolve_device("cuda:99", flag="train.device")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="no CUDA device; use --device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", [["generate", "X", "--prompt", "a"], ["serve", "X"], ["eval", "X", "--perplexity", "f"]])
def test_every_command_refuses_a_missing_device_in_one_line(command, capsys, tmp_path):
    argv = [str(tmp_path / "nothing") if a == "X" else a for a in command]
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no CUDA device" in err
