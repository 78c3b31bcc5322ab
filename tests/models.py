"""Zoo of small, real PyTorch models used to check npuc against eager PyTorch.

Each factory seeds torch, builds a model that mirrors a real architecture (or a
block of one) and returns ``(model.eval(), example_inputs)``.  Every model is
small enough to ``torch.export`` in a few seconds on a laptop CPU, runs in eval
mode, produces a single finite tensor, and survives ``run_decompositions()``.

Normalisation layers get random affine parameters and BatchNorm gets random
running statistics so that none of them folds into an identity.

The registry :data:`ZOO` at the bottom maps a model name to its factory.  This
module deliberately imports nothing from npuc.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Example = tuple[nn.Module, tuple[torch.Tensor, ...]]
Factory = Callable[[], Example]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def _randomize_norms(model: nn.Module) -> nn.Module:
    """Give norm layers random affine params and BN random running stats."""
    for m in model.modules():
        if not isinstance(m, _NORMS):
            continue
        if getattr(m, "weight", None) is not None:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


# --------------------------------------------------------------------------- MLP / CNN


def mlp() -> Example:
    """Plain 3-layer perceptron (classic MLP classifier head)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    return model.eval(), (torch.randn(4, 64),)


def cnn_bn() -> Example:
    """VGG-style CNN: (conv-BN-ReLU) x2, max-pool, flatten, linear."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(4), nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )  # fmt: skip
    _randomize_norms(model)
    return model.eval(), (torch.randn(2, 3, 32, 32),)


# --------------------------------------------------------------------------- ResNet family


class BasicBlock(nn.Module):
    """ResNet-18/34 basic block; a strided 1x1 projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3)
        reshape = stride != 1 or cin != cout
        self.down = _conv_bn(cin, cout, 1, stride) if reshape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + self.down(x))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck block (1x1 reduce, 3x3, 1x1 expand) with identity shortcut."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, width, 1)
        self.conv2 = _conv_bn(width, width, 3)
        self.conv3 = _conv_bn(width, channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        y = self.relu(self.conv2(y))
        return self.relu(self.conv3(y) + x)


def resnet_basic() -> Example:
    """ResNet BasicBlock with strided downsample shortcut (first block of a ResNet stage)."""
    torch.manual_seed(2)
    model = _randomize_norms(BasicBlock(16, 32, stride=2))
    return model.eval(), (torch.randn(1, 16, 16, 16),)


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016) with torchvision's layer layout, randomly initialised."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def resnet18(resolution: int = 224) -> Example:
    """Full ResNet-18 at ImageNet resolution (1.8 GMACs): the interpreter's speed benchmark."""
    torch.manual_seed(4)
    model = _randomize_norms(ResNet18())
    return model.eval(), (torch.randn(1, 3, resolution, resolution),)


def resnet_bottleneck() -> Example:
    """ResNet-50 Bottleneck block with identity shortcut."""
    torch.manual_seed(3)
    model = _randomize_norms(Bottleneck(64, 16))
    return model.eval(), (torch.randn(1, 64, 8, 8),)


# --------------------------------------------------------------------------- mobile blocks


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual: expand, depthwise, linear projection, residual."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.block = nn.Sequential(
            _conv_bn(channels, hidden, 1), nn.ReLU6(),
            _conv_bn(hidden, hidden, 3, groups=hidden), nn.ReLU6(),
            _conv_bn(hidden, channels, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class RepVGGBlock(nn.Module):
    """RepVGG training-time block: 3x3 conv-BN + 1x1 conv-BN + identity BN, summed, ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dense = _conv_bn(channels, channels, 3)
        self.pointwise = _conv_bn(channels, channels, 1)
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.dense(x) + self.pointwise(x) + self.identity(x))


def mobilenetv2_block() -> Example:
    """MobileNetV2 inverted residual block (expand 6, stride 1)."""
    torch.manual_seed(4)
    model = _randomize_norms(InvertedResidual(16, expand=6))
    return model.eval(), (torch.randn(1, 16, 16, 16),)


def repvgg_block() -> Example:
    """RepVGG block in its multi-branch (training-time) form."""
    torch.manual_seed(5)
    model = _randomize_norms(RepVGGBlock(8))
    return model.eval(), (torch.randn(1, 8, 16, 16),)


# --------------------------------------------------------------------------- attention


class AttentionBlock(nn.Module):
    """Post-norm self-attention twice: hand-written MHA, then causal SDPA with a float mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out2 = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        y = self._merge(torch.softmax(scores, dim=-1) @ v)
        x = self.norm1(x + self.out(y))

        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=x.dtype, device=x.device), diagonal=1) * -1e9
        q, k, v = (self._split(p) for p in self.qkv(x).chunk(3, dim=-1))
        y = self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=causal))
        return self.norm2(x + self.out2(y))


class SelfAttention(nn.Module):
    """Self-attention wrapper around nn.MultiheadAttention returning only the output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def transformer_encoder() -> Example:
    """One post-norm nn.TransformerEncoderLayer (BERT/ViT encoder layer)."""
    torch.manual_seed(6)
    model = nn.TransformerEncoderLayer(
        d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
    )
    _randomize_norms(model)
    return model.eval(), (torch.randn(2, 10, 32),)


def attention_block() -> Example:
    """Hand-written transformer attention (BERT-style) plus a causal SDPA (GPT-style) layer."""
    torch.manual_seed(7)
    model = _randomize_norms(AttentionBlock(32, 4))
    return model.eval(), (torch.randn(2, 12, 32),)


def mha() -> Example:
    """nn.MultiheadAttention self-attention (PyTorch's stock MHA)."""
    torch.manual_seed(8)
    return SelfAttention(32, 4).eval(), (torch.randn(2, 10, 32),)


# --------------------------------------------------------------------------- speech / audio


class ConformerConv(nn.Module):
    """Conformer convolution module (Gulati et al. 2020) on (batch, time, channels)."""

    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.pw1 = nn.Conv1d(channels, 2 * channels, 1)
        self.glu = nn.GLU(dim=1)
        self.dw = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.bn = nn.BatchNorm1d(channels)
        self.act = nn.SiLU()
        self.pw2 = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.glu(self.pw1(self.norm(x).transpose(1, 2)))
        y = self.drop(self.pw2(self.act(self.bn(self.dw(y)))))
        return x + y.transpose(1, 2)


class KWSNet(nn.Module):
    """Keyword-spotting CNN over MFCCs, DS-CNN flavoured (Zhang et al. 'Hello Edge')."""

    def __init__(self, classes: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=(2, 1), padding=1, bias=False), nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(16),
            nn.LeakyReLU(0.1),
        )  # fmt: skip
        self.ds1 = self._separable(16, 32, stride=1)
        self.ds2 = self._separable(32, 32, stride=2)
        self.pool = nn.AvgPool2d((13, 5))
        self.fc = nn.Linear(32, classes)

    @staticmethod
    def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            _conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU(),
            _conv_bn(cin, cout, 1), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.ds2(self.ds1(self.stem(x))))
        return F.log_softmax(self.fc(x.flatten(1)), dim=-1)


class RNNClassifier(nn.Module):
    """Sequence classifier: single-layer LSTM/GRU, last time step, linear head."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU], features: int, hidden: int) -> None:
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def conformer_conv() -> Example:
    """Conformer convolution module (ASR encoder block component)."""
    torch.manual_seed(9)
    model = _randomize_norms(ConformerConv(16))
    return model.eval(), (torch.randn(2, 20, 16),)


def kws_cnn() -> Example:
    """DS-CNN keyword spotter on a 49x10 MFCC map (Google Speech Commands, 12 classes)."""
    torch.manual_seed(10)
    model = _randomize_norms(KWSNet())
    with torch.no_grad():  # spread the logits, so log_softmax's output depends on the input
        model.fc.weight.mul_(30)
    return model.eval(), (torch.randn(1, 1, 49, 10),)


def lstm_classifier() -> Example:
    """LSTM sequence classifier (e.g. gesture / sensor time-series model)."""
    torch.manual_seed(11)
    return RNNClassifier(nn.LSTM, 8, 16).eval(), (torch.randn(2, 6, 8),)


def gru_classifier() -> Example:
    """GRU sequence classifier (e.g. gesture / sensor time-series model)."""
    torch.manual_seed(12)
    return RNNClassifier(nn.GRU, 8, 16).eval(), (torch.randn(2, 6, 8),)


# --------------------------------------------------------------------------- vision


class SRNet(nn.Module):
    """ESPCN-like super-resolution net ending in a sub-pixel (pixel-shuffle) upsample."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.PReLU(16),
            nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(),
            nn.Conv2d(16, 16, 3, padding=1), nn.Hardswish(),
            nn.Conv2d(16, 3 * scale * scale, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.scale)


def _conv_gn_silu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(4, cout), nn.SiLU())


class SpatialAttention(nn.Module):
    """Single-head self-attention over the H*W positions (diffusion U-Net style)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)  # each (b, c, hw)
        attn = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=-1)  # (b, hw, hw)
        y = (v @ attn.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj(y)


class UNetSmall(nn.Module):
    """Two-level U-Net with GroupNorm/SiLU, attention bottleneck and cat skip connections."""

    def __init__(self) -> None:
        super().__init__()
        self.inc = _conv_gn_silu(3, 8)
        self.down1 = nn.Sequential(nn.AvgPool2d(2), _conv_gn_silu(8, 16))
        self.down2 = _conv_gn_silu(16, 32, stride=2)
        self.mid = SpatialAttention(32)
        self.up1 = _conv_gn_silu(32 + 16, 16)
        self.up2 = _conv_gn_silu(16 + 8, 8)
        self.out = nn.Conv2d(8, 3, 3)  # padding done explicitly with F.pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.inc(x)
        e2 = self.down1(e1)
        m = self.mid(self.down2(e2))
        u = F.interpolate(m, scale_factor=2, mode="nearest")
        u = self.up1(torch.cat([u, e2], dim=1))
        u = F.interpolate(u, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        u = self.up2(torch.cat([u, e1], dim=1))
        return self.out(F.pad(u, (1, 1, 1, 1)))


def sr_net() -> Example:
    """ESPCN-style x2 super-resolution network with PixelShuffle."""
    torch.manual_seed(13)
    return SRNet().eval(), (torch.randn(1, 3, 12, 12),)


def unet_small() -> Example:
    """Small diffusion-style U-Net (GroupNorm, SiLU, attention bottleneck, interpolate skips)."""
    torch.manual_seed(14)
    model = _randomize_norms(UNetSmall())
    return model.eval(), (torch.randn(1, 3, 16, 16),)


# --------------------------------------------------------------------------- op coverage


class OpsMix(nn.Module):
    """Grab-bag of ops not otherwise covered by the zoo; returns one flat feature tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 8, 3, stride=2, padding=1, output_padding=1)
        self.same = nn.Conv2d(8, 8, 3, padding="same", dilation=2)
        self.shift = nn.Parameter(torch.randn(3, 1, 1))
        self.scale = nn.Parameter(torch.randn(1, 3, 1, 1))
        self.softmax = nn.Softmax(dim=-1)
        self.log_softmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.same(self.up(x))  # (2, 8, 16, 16)
        a, b = y.split([3, 5], dim=1)  # 3 + 5 channels
        b1, b2, b3 = b.chunk(3, dim=1)  # uneven chunks: 2, 2, 1
        h = F.gelu(a) * torch.sigmoid(b3) + F.gelu(a, approximate="tanh")  # broadcast C: 1 -> 3
        g = F.hardswish(b1) - F.hardsigmoid(b2) / 2.0 + F.relu6(b1 * 3.0)
        g = 1.0 - g * 0.5
        h = (h - self.shift) / (self.scale.abs() + 1.0)
        h = h[:, torch.tensor([2, 0, 1])]  # gather with a constant index tensor
        z = F.pad(torch.cat([h, g], dim=1), (1, 0, 2, 1), value=0.25)  # (2, 5, 19, 17)
        z = F.avg_pool2d(z, 3, stride=2, padding=1)  # (2, 5, 10, 9)

        strided = z[:, :, ::2, 1::3]  # (2, 5, 5, 3)
        first = z[:, 0]  # (2, 10, 9)
        pooled = F.adaptive_avg_pool2d(z, (1, 1)).squeeze(-1).squeeze(-1)  # (2, 5)
        seq = z.flatten(2)  # (2, 5, 90)
        p_max = F.max_pool1d(seq, 3, stride=2)  # (2, 5, 44)
        p_avg = F.avg_pool1d(seq, 4, stride=2, padding=1)  # (2, 5, 45)

        r1 = strided.mean(dim=(2, 3), keepdim=True)  # (2, 5, 1, 1)
        r2 = first.sum(dim=-1)  # (2, 10)
        r3 = p_max.amax(dim=1, keepdim=True)  # (2, 1, 44)
        r4 = p_avg.mean(dim=-1)  # (2, 5)
        e = pooled.unsqueeze(1).expand(2, 3, 5)  # (2, 3, 5)
        sm = self.softmax(e * r4.unsqueeze(1) + torch.arange(3.0).view(1, 3, 1))
        ls = self.log_softmax(r2)
        return torch.cat([sm.flatten(1), ls, r1.flatten(1) * 2, r3.flatten(1)], dim=1)


class EmbeddingMLP(nn.Module):
    """Bag-of-embeddings text classifier (fastText-like)."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).mean(dim=1))


def ops_mix() -> Example:
    """Op-coverage module (ConvTranspose, same/dilated conv, activations, pools, views...)."""
    torch.manual_seed(15)
    return OpsMix().eval(), (torch.randn(2, 4, 8, 8),)


def embedding_mlp() -> Example:
    """fastText-style embedding-bag classifier on int64 token ids."""
    torch.manual_seed(16)
    return EmbeddingMLP().eval(), (torch.randint(0, 50, (2, 7), dtype=torch.int64),)


# --------------------------------------------------------------------------- MiniLM


def minilm() -> Example:
    """sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT) with mean pooling, offline: the
    README's example model (examples/minilm.py), two sentences padded to 16 tokens."""
    from examples.minilm import build

    return build(tokens=16)


# --------------------------------------------------------------------------- registry

ZOO: dict[str, Factory] = {
    "mlp": mlp,
    "cnn_bn": cnn_bn,
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "resnet18": resnet18,
    "mobilenetv2_block": mobilenetv2_block,
    "repvgg_block": repvgg_block,
    "transformer_encoder": transformer_encoder,
    "attention_block": attention_block,
    "mha": mha,
    "conformer_conv": conformer_conv,
    "kws_cnn": kws_cnn,
    "lstm_classifier": lstm_classifier,
    "gru_classifier": gru_classifier,
    "sr_net": sr_net,
    "unet_small": unet_small,
    "ops_mix": ops_mix,
    "embedding_mlp": embedding_mlp,
    "minilm": minilm,
}
