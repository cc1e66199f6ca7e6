"""Recurrent systems whose weights are theta: dense layers and element-wise cells.

``dense_system`` builds the one-dense-layer system that
:func:`metaopt.uoro_preactivation` needs (every estimator takes it);
``elementwise_system`` wraps an :class:`ElementwiseCell` (eLSTM, RTU) for
:func:`metaopt.rtrl_elementwise`, exact RTRL at a cost linear in the weights.
"""

from metaopt._src.recurrent.dense import dense_system
from metaopt._src.recurrent.dense import DenseSystem
from metaopt._src.recurrent.elementwise import cell_outputs
from metaopt._src.recurrent.elementwise import elementwise_system
from metaopt._src.recurrent.elementwise import ElementwiseCell
from metaopt._src.recurrent.elementwise import ElementwiseSystem
from metaopt._src.recurrent.elementwise import RecurrentState

__all__ = ("cell_outputs", "dense_system", "DenseSystem", "elementwise_system", "ElementwiseCell",
           "ElementwiseSystem", "RecurrentState")
