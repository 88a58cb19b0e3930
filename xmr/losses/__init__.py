"""Ranking losses of xmr: ``forward(scores (B, L), labels (B, L), mask (B, L) bool) -> scalar``.

One module per loss, one ``conf/loss/<name>.yaml`` per option. Shared conventions (padding,
which lists count, tie-breaking) are described in :mod:`xmr.losses._common`. The pair baselines'
losses over in-batch (image, caption) pairs are functions in :mod:`xmr.losses.pairwise`.
"""

from xmr.losses.approx_ndcg import ApproxNDCGLoss
from xmr.losses.lambdarank import LambdaLoss, LambdaRankLoss
from xmr.losses.listmle import ListMLELoss
from xmr.losses.listnet import ListNetLoss
from xmr.losses.neural_ndcg import NeuralNDCGLoss, NeuralNDCGTransposedLoss
from xmr.losses.pointwise_bce import PointwiseBCELoss
from xmr.losses.ranknet import RankNetLoss

__all__ = [
    "ApproxNDCGLoss",
    "LambdaLoss",
    "LambdaRankLoss",
    "ListMLELoss",
    "ListNetLoss",
    "NeuralNDCGLoss",
    "NeuralNDCGTransposedLoss",
    "PointwiseBCELoss",
    "RankNetLoss",
]
