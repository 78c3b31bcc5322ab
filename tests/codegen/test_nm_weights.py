"""nm-encoded weights in the generated C: decoded bit for bit as the interpreter decodes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import npuc
from npuc.quant.constants import encoding_of
from tests.codegen.harness import assert_bit_exact
from tests.sparsity import nm_net


def nm_layers(cm: npuc.CompiledModel) -> list[str]:
    return [encoding_of(n).name for n in cm.ir.nodes if n.is_const
            and encoding_of(n).kind == "nm"]


@pytest.mark.parametrize(("n", "m", "target"), [(2, 4, "npu-int8"), (1, 4, "dsp-int16"),
                                                (3, 8, "npu-int8")])
def test_nm_weights_bit_exact(n: int, m: int, target: str, tmp_path: Path) -> None:
    """conv with a partial last group, grouped conv, conv_transpose (groups along axis 0) and
    linears, stored nm<n>:<m>: the C equals cm.run bit for bit."""
    model, x = nm_net(n, m)
    cm = npuc.compile(model, (x,), target=target,
                      passes={"quantize": {"weights": f"nm{n}:{m}"}})
    assert nm_layers(cm) == [f"nm{n}:{m}"] * 5
    torch.manual_seed(1)
    assert_bit_exact(cm, [torch.randn(2, 6, 4, 4).numpy() * 1.5], tmp_path)
