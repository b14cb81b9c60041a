import pytest

from retrieval.device import DeviceError, gpu_names, resolve


def test_cpu_always_resolves():
    placement = resolve("cpu")
    assert placement.kind == "cpu" and "CPU" in placement.description


def test_gpu_request_matches_what_keras_sees():
    if gpu_names():
        assert resolve("gpu").kind == "gpu"
        assert resolve("auto").kind == "gpu"
    else:
        with pytest.raises(DeviceError, match="no GPU is visible"):
            resolve("gpu")
        assert resolve("auto").kind == "cpu"


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device"):
        resolve("tpu")
