"""TensorBoard files written without TensorFlow, and the tuner's views in them.

``SummaryWriter`` writes scalars, histograms, images, text, custom-scalar
layouts and hparams sessions with TensorBoard's own protos;
``log_tuner_info`` / ``log_hyperparameters`` / ``tuner_layout`` are what
:func:`metaopt.tune` logs every outer step; ``HorizonNoise`` each horizon's summed hypergradient
and its noise across chains, ``FreshEvaluation`` theta so far against theta0 after one fresh
horizon (theta0's values in the ``untuned`` sub-run).
"""

from metaopt._src.tensorboard.summary import coordinate_names
from metaopt._src.tensorboard.summary import log_hyperparameters
from metaopt._src.tensorboard.summary import log_schedule_curves
from metaopt._src.tensorboard.summary import log_tuner_info
from metaopt._src.tensorboard.summary import schedule_points
from metaopt._src.tensorboard.summary import snr
from metaopt._src.tensorboard.summary import SummaryWriter
from metaopt._src.tensorboard.summary import tuner_layout
from metaopt._src.tensorboard.views import FreshEvaluation
from metaopt._src.tensorboard.views import HorizonNoise

__all__ = ("coordinate_names", "FreshEvaluation", "HorizonNoise", "log_hyperparameters",
           "log_schedule_curves", "log_tuner_info", "schedule_points", "snr", "SummaryWriter",
           "tuner_layout")
