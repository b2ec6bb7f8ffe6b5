"""Distance prediction: backbones (tokens -> pair features), heads (pair features -> distances)."""

from minifold.models.birnn import BiRNNBackbone
from minifold.models.heads import DistogramHead, RegressionHead
from minifold.models.module import DistanceModule
from minifold.models.pair_resnet import PairResNetBackbone
from minifold.models.transformer import TransformerBackbone

__all__ = [
    "BiRNNBackbone",
    "DistanceModule",
    "DistogramHead",
    "PairResNetBackbone",
    "RegressionHead",
    "TransformerBackbone",
]
