"""The domain-specific encoders tau_theta of LDM Sec. 3.3: a condition y -> tokens (B, L, D).

The UNet's cross-attention layers (:mod:`minildm.attention`) read the tokens; what they
mean depends on the encoder:

- :class:`ClassEncoder`: one learned token per class (LSUN category, CelebA gender, toy-face
  hair colour): L = 1.
- :class:`AttributeEncoder`: a *set* of attributes, one learned token per attribute that is
  present, after a "face" token that is always there ("Smiling + Eyeglasses" is 3 tokens).
  A set has no order, so no position is encoded; absent attributes are padding.
- :class:`TextEncoder`: a caption, split into words by :class:`WordTokenizer` (vocabulary
  built from the training captions), embedded with positions and passed through a small
  transformer trained jointly with the UNet (the paper trains its text transformer from
  scratch too, at a much larger scale).
- :class:`LayoutEncoder`: a layout, one box per part (Sec. 4.3, layout-to-image): each box
  that is there becomes a token, its part's embedding plus an embedding of its coordinates,
  and a small transformer mixes them, as the paper encodes OpenImages and COCO boxes.

Every encoder also has a learned null sequence (one token), the "no condition" input that
classifier-free guidance needs (Ho & Salimans 2022): during training each condition is
replaced by it with probability ``drop_probability``, so the same network learns
eps(z_t, t, y) and eps(z_t, t, null), and sampling extrapolates from the second to the first.

Encoders return ``(tokens, mask)``: tokens (B, L, D) and a bool mask (B, L) that is False
at padding, which the attention layers ignore.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from minildm.attention import Attention, FeedForward
from minildm.config import MinildmError, SavedConfig

TOKEN_KINDS = ("class", "attributes", "text", "layout")  # read through cross-attention
CONCAT_KINDS = ("inpaint", "superres", "semantic")  # concatenated to the UNet's input
KINDS = ("none", *TOKEN_KINDS, *CONCAT_KINDS)
MIN_TEXT_LENGTH = 32  # tokens a text encoder reads at least (the start token and 31 words)


@dataclass
class ConditioningConfig(SavedConfig):
    """What the model is conditioned on; saved with the model.

    Attributes:
        kind: ``none``, ``class``, ``attributes``, ``text``, ``layout``, ``inpaint``, ``superres``
            or ``semantic``.
        channels: size D of the tokens.
        class_names: the classes, in the order of their indices: the labels (class), or the
            parts of a part map or a layout (semantic, layout).
        attribute_names: the attributes, in the order of the condition's columns (attributes only).
        vocabulary: the words a caption may use (text only).
        max_length: longest caption in tokens (text only).
        layers: transformer layers of the text encoder.
        drop_probability: how often training replaces the condition by the null sequence.
        superres_factor: how much smaller the low-resolution input is (superres only).
    """

    kind: str = "none"
    channels: int = 64
    class_names: list[str] = field(default_factory=list)
    attribute_names: list[str] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)
    max_length: int = 0
    layers: int = 2
    drop_probability: float = 0.1
    superres_factor: int = 4

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MinildmError(f"unknown conditioning {self.kind!r}: choose one of {', '.join(KINDS)}")


class ConditionEncoder(nn.Module, ABC):
    """Base of the encoders: ``forward(condition, drop)`` -> (tokens (B, L, D), mask (B, L)).

    ``drop`` (B,) bool replaces those rows by the null sequence (one learned token).
    Each encoder defines ``encode``, the condition's own tokens and mask.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.null_token = nn.Parameter(torch.randn(1, channels) * 0.02)

    @abstractmethod
    def encode(self, condition: Tensor) -> tuple[Tensor, Tensor]:
        """The tokens (B, L, D) and mask (B, L) of a batch of conditions."""

    def forward(self, condition: Tensor, drop: Tensor | None = None) -> tuple[Tensor, Tensor]:
        tokens, mask = self.encode(condition)  # (B, L, D), (B, L)
        if drop is not None:
            # Exercise 07.3: replace the rows where `drop` is True by the null sequence (padded to length L)
            ### BEGIN SOLUTION
            null_tokens, null_mask = pad(*self.null(len(tokens)), tokens.shape[1])
            tokens = torch.where(drop[:, None, None], null_tokens, tokens)
            mask = torch.where(drop[:, None], null_mask, mask)
            ### END SOLUTION
        return tokens, mask

    def null(self, n: int) -> tuple[Tensor, Tensor]:
        """The null sequence for ``n`` samples: tokens (n, 1, D), mask (n, 1)."""
        tokens = self.null_token.expand(n, 1, -1)
        return tokens, torch.ones(n, 1, dtype=torch.bool, device=tokens.device)


def pad(tokens: Tensor, mask: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Pad a sequence (B, L, D) with masked-out zeros to ``length`` >= L tokens."""
    extra = length - tokens.shape[1]
    return (torch.nn.functional.pad(tokens, (0, 0, 0, extra)),
            torch.nn.functional.pad(mask, (0, extra), value=False))


class ClassEncoder(ConditionEncoder):
    """Class index (B,) -> one learned token (B, 1, D)."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__(channels)
        self.embedding = nn.Embedding(num_classes, channels)

    def encode(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.embedding(labels.long())[:, None]  # (B, 1, D)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class AttributeEncoder(ConditionEncoder):
    """Attribute set, bool (B, A) -> tokens (B, 1 + A, D): the "face" token, then one token
    per attribute, masked out where the attribute is absent."""

    def __init__(self, num_attributes: int, channels: int):
        super().__init__(channels)
        self.embedding = nn.Embedding(1 + num_attributes, channels)

    def encode(self, attributes: Tensor) -> tuple[Tensor, Tensor]:
        present = attributes.bool()  # (B, A)
        tokens = self.embedding.weight.expand(len(present), -1, -1)  # (B, 1 + A, D)
        always = torch.ones(len(present), 1, dtype=torch.bool, device=present.device)
        return tokens, torch.cat([always, present], dim=1)


class WordTokenizer:
    """Lower-case words -> integer ids; 0 is padding, 1 starts every sequence.

    The vocabulary is every word of the training captions; a prompt with another word is
    refused with the list of known words, rather than silently ignored.
    """

    PAD, START = 0, 1

    def __init__(self, vocabulary: Sequence[str]):
        self.vocabulary = list(vocabulary)
        self.ids = {word: index + 2 for index, word in enumerate(self.vocabulary)}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z]+", text.lower())

    @classmethod
    def from_captions(cls, captions: Sequence[str]) -> WordTokenizer:
        return cls(sorted({word for text in captions for word in cls.words(text)}))

    def __len__(self) -> int:
        return len(self.vocabulary) + 2

    def encode(self, texts: Sequence[str], length: int) -> Tensor:
        """Captions -> ids (B, length): start, the words, then padding."""
        ids = torch.full((len(texts), length), self.PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            words = self.words(text)
            unknown = [word for word in words if word not in self.ids]
            if unknown:
                raise MinildmError(f"unknown word(s) {', '.join(map(repr, unknown))} in prompt {text!r}; "
                                   f"this model knows: {' '.join(self.vocabulary)}")
            if len(words) + 1 > length:
                raise MinildmError(f"prompt {text!r} has {len(words)} words; this model reads at most {length - 1}")
            ids[row, :len(words) + 1] = torch.tensor([self.START, *(self.ids[word] for word in words)])
        return ids

    def decode(self, ids: Tensor) -> str:
        return " ".join(self.vocabulary[i - 2] for i in ids.tolist() if i >= 2)


class TextLayer(nn.Module):
    """Pre-norm transformer encoder layer: self-attention over the words, then an MLP."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
        self.attention = Attention(channels, head_channels=head_channels)
        self.feed_forward = FeedForward(channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x), mask=mask)  # (B, L, D)
        return x + self.feed_forward(self.norm2(x))


class TextEncoder(ConditionEncoder):
    """Token ids (B, L) -> contextual word tokens (B, L, D): embeddings of words and of
    positions, ``layers`` transformer layers, a final LayerNorm."""

    def __init__(self, vocabulary_size: int, max_length: int, channels: int, layers: int):
        super().__init__(channels)
        self.word_embedding = nn.Embedding(vocabulary_size, channels)
        self.position_embedding = nn.Parameter(torch.randn(max_length, channels) * 0.02)
        self.layers = nn.ModuleList(TextLayer(channels) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)

    def encode(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        mask = ids != WordTokenizer.PAD  # (B, L)
        x = self.word_embedding(ids) + self.position_embedding[:ids.shape[1]]  # (B, L, D)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), mask


def box_features(boxes: Tensor, frequencies: int = 4) -> Tensor:
    """Boxes (..., 4) in [0, 1] -> Fourier features (..., 4 * 2 * frequencies): sin and cos of
    2^k pi x for k < ``frequencies``, so that a small network tells nearby edges apart."""
    # Exercise 10.2: the angles 2^k pi x of every coordinate x (coordinate-major), then their sines and cosines
    ### BEGIN SOLUTION
    scales = torch.pi * 2.0 ** torch.arange(frequencies, device=boxes.device)  # (F,)
    angles = rearrange(boxes[..., None] * scales, "... c f -> ... (c f)")  # (..., 4F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
    ### END SOLUTION


class LayoutEncoder(ConditionEncoder):
    """Layout, float (B, P, 5) -> tokens (B, 1 + P, D): row p is part p's flag (1: there) and
    its box (x0, y0, x1, y1) in [0, 1]. A "layout" token that is always there, then one token
    per part that is there: the part's embedding plus an embedding of its box; parts that are
    not there are padding. A small transformer lets the tokens see each other (LDM Sec. 4.3,
    layout-to-image)."""

    def __init__(self, num_parts: int, channels: int, layers: int):
        super().__init__(channels)
        self.part_embedding = nn.Parameter(torch.randn(1 + num_parts, channels) * 0.02)  # row 0: "layout"
        self.box_embedding = nn.Sequential(nn.Linear(32, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.layers = nn.ModuleList(TextLayer(channels) for _ in range(layers))
        self.norm = nn.LayerNorm(channels)

    def encode(self, layout: Tensor) -> tuple[Tensor, Tensor]:
        present, boxes = layout[..., 0] > 0.5, layout[..., 1:]  # (B, P), (B, P, 4)
        parts = self.part_embedding[1:] + self.box_embedding(box_features(boxes))  # (B, P, D)
        first = self.part_embedding[:1].expand(len(layout), 1, -1)  # (B, 1, D)
        x = torch.cat([first, parts], dim=1)  # (B, 1 + P, D)
        mask = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)  # (B, 1 + P)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), mask


def layout_tensor(boxes: Tensor, present: Tensor) -> Tensor:
    """Part boxes (N, P, 4) and flags (N, P) -> the layout a :class:`LayoutEncoder` reads,
    (N, P, 5): the flag, then the box (zero where the part is not there)."""
    return torch.cat([present[..., None].float(), boxes * present[..., None]], dim=-1)


def mirror_layout(layout: Tensor) -> Tensor:
    """The layout of the mirror image: x0, x1 -> 1 - x1, 1 - x0 (for the flipped copies
    training adds); parts that are not there stay zero."""
    present, x0, y0, x1, y1 = layout.unbind(-1)
    return torch.stack([present, (1 - x1) * present, y0, (1 - x0) * present, y1], dim=-1)


def build_encoder(config: ConditioningConfig) -> ConditionEncoder | None:
    """The encoder tau_theta for a token kind; None for ``none`` and concat kinds."""
    if config.kind == "class":
        return ClassEncoder(len(config.class_names), config.channels)
    if config.kind == "attributes":
        return AttributeEncoder(len(config.attribute_names), config.channels)
    if config.kind == "text":
        return TextEncoder(len(config.vocabulary) + 2, config.max_length, config.channels, config.layers)
    if config.kind == "layout":
        return LayoutEncoder(len(config.class_names), config.channels, config.layers)
    return None

