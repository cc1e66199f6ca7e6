"""Online reinforcement learning: an actor-critic agent as an unrolled system, and real-time PPO.

``agent_system`` makes an agent acting in a pure-JAX environment an
:class:`~metaopt.UnrolledSystem` in its weights (one-step actor-critic, trained
online by any estimator); ``real_time_ppo`` (RTRL traces) and ``bptt_ppo``
(truncated BPTT over sequences) train a recurrent agent with PPO on rollouts
collected while it acts; ``categorical`` and ``gaussian`` are the policies'
action distributions.
"""

from metaopt._src.rl.agent import agent_system
from metaopt._src.rl.agent import AgentState
from metaopt._src.rl.agent import AgentSystem
from metaopt._src.rl.bptt_ppo import bptt_ppo
from metaopt._src.rl.bptt_ppo import BPTTPPOState
from metaopt._src.rl.policies import categorical
from metaopt._src.rl.policies import gaussian
from metaopt._src.rl.policies import Policy
from metaopt._src.rl.ppo import Learner
from metaopt._src.rl.real_time_ppo import real_time_ppo
from metaopt._src.rl.real_time_ppo import RealTimePPOState

__all__ = ("agent_system", "AgentState", "AgentSystem", "bptt_ppo", "BPTTPPOState",
           "categorical", "gaussian", "Learner", "Policy", "real_time_ppo", "RealTimePPOState")
