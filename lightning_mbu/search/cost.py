"""Cost model: per-layer operations and parameters, the cost score of eq. 2, config costs.

Counts come from the real ``MBUNet`` run on the ``meta`` device (shapes only, no
arithmetic, so the 640x959 default net costs milliseconds): forward hooks on every
conv record input and output shapes, and the counts follow from those shapes.

Two views of the same convs:
- ``ops`` = multiplications + additions of the float computation, the quantity the
  paper profiles (Fig. 4) and scores (eq. 2);
- ``binary ops`` = what the packed backend executes for a config: every binary conv is
  an implicit GEMM over bits (M output positions x N output channels x K packed input
  bits, each bit one AND/XOR plus one popcount-add, so 2 ops). Input channels are
  packed in 32-bit words, so K is padded to a multiple of 32 per kernel tap. A masked
  layer runs two bit-planes (b+ and b-, 2N columns) in both encodings; a binary layer
  runs one plane, plus, in the AND encoding, one extra column of ones that yields the
  per-window popc(a') (N+1 columns). k-bit weights are costed as k planes (bit-serial).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cutlass_kernels.table import DEFAULT_ENCODING, check_encoding

from ..config import LAYER_NAMES, PAPER_NAMES, LayerConfig
from ..model import MBUNet
from ..ops.graph import gemm_shape, window_count_column

#: bit-planes a weight mode runs as: masked is b+ and b-, k-bit weights run bit-serially
WEIGHT_PLANES = {"binary": 1, "masked": 2, "int2": 2, "int4": 4, "int8": 8}
NORMALIZATIONS = ("max", "minmax")
#: Convs outside the 12 configurable layers: the float first conv, the stem, the float 1x1 head.
FIXED_PARTS = {"first": "inc.conv1.conv", "stem": "inc.conv2.conv", "head": "outc"}


@dataclass(frozen=True)
class ConvCost:
    """One conv as it ran: its shapes and the counts that follow from them."""

    module: str
    transposed: bool
    cin: int
    cout: int
    kernel: tuple[int, int]
    out_positions: int  # batch x output height x output width
    in_positions: int
    mults: int
    adds: int
    params: int

    @property
    def ops(self) -> int:
        return self.mults + self.adds

    def gemm(self, planes: int = 1, window_count: bool = False) -> tuple[int, int, int]:
        """(M, N, K) of the binary implicit GEMM (``ops.graph.gemm_shape``), K padded to whole words per tap."""
        positions = self.in_positions if self.transposed else self.out_positions
        return gemm_shape(positions, self.cin, self.cout, self.kernel, self.transposed, planes, window_count)


@dataclass(frozen=True)
class LayerCost:
    name: str
    convs: tuple[ConvCost, ...]

    @property
    def ops(self) -> int:
        return sum(c.ops for c in self.convs)

    @property
    def mults(self) -> int:
        return sum(c.mults for c in self.convs)

    @property
    def adds(self) -> int:
        return sum(c.adds for c in self.convs)

    @property
    def params(self) -> int:
        return sum(c.params for c in self.convs)

    def binary_ops(self, mode: str, encoding: str = DEFAULT_ENCODING) -> int:
        """Bit operations the packed backend runs for this layer in ``mode`` (see WEIGHT_PLANES)."""
        check_encoding(encoding)
        if mode not in WEIGHT_PLANES:
            raise ValueError(f"layer {self.name}: binary op counts exist for "
                             f"{', '.join(WEIGHT_PLANES)} weights, not {mode!r}")
        total = 0
        for conv in self.convs:
            m, n, k = conv.gemm(WEIGHT_PLANES[mode], window_count_column(mode, encoding))
            total += 2 * m * n * k
        return total


def _conv_cost(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ConvCost:
    transposed = isinstance(module, nn.ConvTranspose2d)
    if module.groups != 1:
        raise ValueError(f"cost model: grouped conv {name} is not supported")
    if transposed and tuple(module.stride) != tuple(module.kernel_size):
        raise ValueError(f"cost model: transposed conv {name} must have stride == kernel size")
    n, cin, hin, win = x.shape
    _, cout, hout, wout = y.shape
    kh, kw = module.kernel_size
    out_elems = n * cout * hout * wout
    # every output sums cin*kh*kw products (a conv) or cin products (a non-overlapping
    # transposed conv); summing c terms takes c-1 additions, a bias one more
    mults = out_elems * cin * (1 if transposed else kh * kw)
    adds = mults - out_elems + (out_elems if module.bias is not None else 0)
    params = sum(p.numel() for p in module.parameters(recurse=False))
    return ConvCost(name, transposed, cin, cout, (kh, kw), n * hout * wout, n * hin * win, mults, adds, params)


def measure_convs(net: nn.Module, size: tuple[int, int], batch: int = 1) -> dict[str, ConvCost]:
    """Run ``net`` on a meta tensor of ``size`` and return every conv's cost by module name."""
    convs = {name: m for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    found: dict[str, ConvCost] = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: found.__setitem__(
            name, _conv_cost(name, mod, args[0], out)))
        for name, m in convs.items()
    ]
    try:
        in_channels = next(iter(convs.values())).in_channels
        with torch.no_grad():
            net(torch.empty(batch, in_channels, *size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return found


@dataclass(frozen=True)
class CostModel:
    """Costs of the 12 configurable layers and the fixed parts of one MBUNet at one input size."""

    size: tuple[int, int]
    base: int
    layers: dict[str, LayerCost]
    fixed: dict[str, ConvCost]
    stem_mode: str = "masked"

    @classmethod
    def measure(cls, size: tuple[int, int] = (512, 512), base: int = 64, in_channels: int = 3,
                num_classes: int = 1, stem_mode: str = "masked") -> CostModel:
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"cost model: size must be (height, width) of positive ints, got {size!r}")
        with torch.device("meta"):
            net = MBUNet(in_channels=in_channels, num_classes=num_classes, base=base)
        convs = measure_convs(net, tuple(size))
        layers = {
            name: LayerCost(name, tuple(c for m, c in convs.items() if m.startswith(name + ".")))
            for name in LAYER_NAMES
        }
        fixed = {part: convs[module] for part, module in FIXED_PARTS.items()}
        return cls(tuple(size), base, layers, fixed, stem_mode)

    # -- eq. 2 -----------------------------------------------------------------------------
    def scores(self, w_op: float = 0.5, normalize: str = "max") -> dict[str, float]:
        """s = w_op * n_op + (1 - w_op) * n_param, both normalised to [0, 1] over the 12 layers."""
        if not 0.0 <= w_op <= 1.0:
            raise ValueError(f"w_op must lie in [0, 1] (w_param = 1 - w_op), got {w_op}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")
        ops = _normalized([self.layers[n].ops for n in LAYER_NAMES], normalize)
        params = _normalized([self.layers[n].params for n in LAYER_NAMES], normalize)
        return {n: w_op * o + (1 - w_op) * p for n, o, p in zip(LAYER_NAMES, ops, params)}

    def ranking(self, w_op: float = 0.5, normalize: str = "max") -> list[str]:
        """Layer names from the cheapest to the dearest by score (ties kept in LAYER_NAMES order)."""
        s = self.scores(w_op, normalize)
        return sorted(LAYER_NAMES, key=lambda n: s[n])

    def cost_aware_configs(self, w_op: float = 0.5, normalize: str = "max") -> list[LayerConfig]:
        """The paper's sweep: config k masks the k cheapest layers, k = 0..12."""
        order = self.ranking(w_op, normalize)
        return [LayerConfig.masking(order[:k]) for k in range(len(order) + 1)]

    # -- configs ---------------------------------------------------------------------------
    def config_binary_ops(self, config: str | LayerConfig, encoding: str = DEFAULT_ENCODING) -> int:
        """Bit operations of the 12 layers plus the stem: the part of the net the config changes."""
        config = LayerConfig.parse(config)
        stem = LayerCost("stem", (self.fixed["stem"],)).binary_ops(self.stem_mode, encoding)
        return stem + sum(self.layers[n].binary_ops(m, encoding) for n, m in config.items())

    def masking_cost(self, encoding: str = DEFAULT_ENCODING) -> dict[str, int]:
        """Extra bit operations of masking each layer instead of keeping it binary."""
        return {n: self.layers[n].binary_ops("masked", encoding) - self.layers[n].binary_ops("binary", encoding)
                for n in LAYER_NAMES}

    @property
    def float_ops(self) -> int:
        """Mults + adds of the two float convs (first conv and head) that every config keeps."""
        return self.fixed["first"].ops + self.fixed["head"].ops

    def table(self, w_op: float = 0.5, normalize: str = "max") -> list[dict]:
        """Rows of Table A.4 (plus ops and params), cheapest first."""
        s = self.scores(w_op, normalize)
        return [
            {"rank": r, "layer": n, "paper_name": PAPER_NAMES[n], "ops": self.layers[n].ops,
             "mults": self.layers[n].mults, "adds": self.layers[n].adds,
             "params": self.layers[n].params, "score": s[n]}
            for r, n in enumerate(self.ranking(w_op, normalize), start=1)
        ]

    def as_dict(self) -> dict:
        return {
            "size": list(self.size), "base": self.base, "stem_mode": self.stem_mode,
            "layers": {n: [asdict(c) for c in lc.convs] for n, lc in self.layers.items()},
            "fixed": {k: asdict(c) for k, c in self.fixed.items()},
        }


def _normalized(values: Sequence[float], how: str) -> list[float]:
    hi, lo = max(values), min(values)
    if how == "max":
        return [v / hi if hi else 0.0 for v in values]
    return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in values]
