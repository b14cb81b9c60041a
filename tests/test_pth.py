import os
import pickle

import numpy as np
import pytest

from retrieval.backbones.efficientnet_lite import VARIANTS, block_args, weights_file
from retrieval.backbones.pth import UnsafePickleError, load_state_dict


def test_reads_real_checkpoint_without_torch():
    state = load_state_dict(weights_file(VARIANTS["efficientnet-lite0"]))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_fc.weight"].flags.writeable
    # Real trained weights, not zeros or a constant
    assert 0.01 < float(np.std(state["_conv_stem.weight"])) < 10


@pytest.mark.parametrize("name", list(VARIANTS))
def test_block_layout_matches_each_checkpoint(name):
    variant = VARIANTS[name]
    state = load_state_dict(weights_file(variant))
    blocks = block_args(variant)
    assert len(blocks) == 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    for b, (kernel, _stride, expand, c_in, c_out) in enumerate(blocks):
        assert state[f"_blocks.{b}._depthwise_conv.weight"].shape == (c_in * expand, 1, kernel, kernel)
        assert state[f"_blocks.{b}._project_conv.weight"].shape[:2] == (c_out, c_in * expand)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_pickle_naming_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump(0x1950A86A20F9469CFC6C, fh, protocol=2)
        pickle.dump(1001, fh, protocol=2)
        pickle.dump({"little_endian": True}, fh, protocol=2)
        pickle.dump({"weight": _Evil(marker)}, fh, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        load_state_dict(path)
    assert not marker.exists()


def test_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    pickle.dump("hello", open(path, "wb"))
    with pytest.raises(ValueError, match="not a legacy torch checkpoint"):
        load_state_dict(path)
