"""Conv2d that, on the CPU, can keep its weight pre-arranged for oneDNN across calls.

Every CPU convolution call has oneDNN copy the weight into its own blocked layout before
computing. Where the map is small and the weight large (the UNet's 8x8 and 16x16 levels: 1280
channels in, 1280 to 2560 out) that copy takes as long as the convolution itself (1280->1280 3x3
at 8x8, batch 2: 128 ms a call, 61 ms on the arranged weight): 0.82 s of reordering in an SD 1.5
step at 512x512. With ``prepack`` on, the arranged weight is made once and reused, for float32
inference on the CPU; everything else (training, other dtypes, other devices, compiled code, a
torch without the oneDNN operators) takes nn.Conv2d's own path. Same arithmetic: the results are
those of nn.Conv2d up to float32 rounding.

The arranged copy is an extra copy of the weight (the UNet's convolutions: 2.0 GB for SD 1.5 in
float32), so the weights themselves stay in the checkpoint's layout, mapped from the file, rather
than being copied channels-last, and the copies live only while sampling
(``core.speed.arranged_while_sampling`` frees them when it ends).
A copy is made again whenever the weight is replaced or written in place (a LoRA merge does
either) or the input's shape changes: it is keyed by the weight's address, its in-place version
and the input's shape. A freed weight's address can be reused by a new tensor with the same
version number, which the key cannot tell apart; hence the copies never outlive a sampling run,
and weights change only between runs (extra networks are merged before sampling).
"""
from __future__ import annotations

import torch
from torch import nn

# The operators inductor uses for the same purpose: present in CPU builds of torch with oneDNN.
PREPACK_AVAILABLE = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state-dict names) with an optional arranged weight."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prepack = False
        self._packed: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prepack and self._packable(x):
            return self._forward_packed(x)
        return super().forward(x)

    def release_packed(self) -> None:
        self._packed = None

    def _packable(self, x: torch.Tensor) -> bool:
        return (
            PREPACK_AVAILABLE
            and x.device.type == "cpu"
            and x.dtype == torch.float32 == self.weight.dtype
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        )

    def _forward_packed(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN's fast kernels take channels-last maps; the UNet runs in that layout on the CPU.
        x = x.contiguous(memory_format=torch.channels_last)
        key = (self.weight.data_ptr(), self.weight._version, tuple(x.shape))
        if self._packed is None or self._packed[0] != key:
            self._packed = None  # the old copy goes before the new one is made
            arranged = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.to_mkldnn(), list(self.padding), list(self.stride), list(self.dilation), self.groups,
                list(x.shape),
            )
            self._packed = (key, arranged)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self._packed[1], self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "none", [], "",
        )


def use_prepacked_convolutions(model: nn.Module, on: bool = True) -> int:
    """Switch the arranged-weight path of every ``Conv2d`` in ``model`` -> how many there are."""
    convolutions = [m for m in model.modules() if isinstance(m, Conv2d)]
    for conv in convolutions:
        conv.prepack = on
        if not on:
            conv.release_packed()
    return len(convolutions)


def release_packed_weights(model: nn.Module) -> None:
    """Free every arranged copy in ``model`` (made again at the next call that needs it)."""
    for module in model.modules():
        if isinstance(module, Conv2d):
            module.release_packed()


def prepacked_bytes(model: nn.Module) -> int:
    """Memory the arranged copies of ``model``'s switched-on convolutions take (as much as their
    weights), 0 when none is switched on."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, Conv2d) and m.prepack)
