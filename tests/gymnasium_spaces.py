"""Gymnasium's own list of test spaces (`TESTING_SPACES`), made with the installed gymnasium.

The list lives in gymnasium's repository (tests/spaces/utils.py), not in the installed
package, so it is built here again, one space for each of its 50 entries, in its order:
22 fundamental spaces, then 28 composite ones (Tuple, Dict, Graph, Sequence, OneOf).
"""

from __future__ import annotations

from typing import List

import gymnasium
import numpy as np
from gymnasium.spaces import (
    Box,
    Dict,
    Discrete,
    Graph,
    MultiBinary,
    MultiDiscrete,
    OneOf,
    Sequence,
    Space,
    Text,
    Tuple,
)


def fundamental() -> List[Space]:
    inf = np.inf
    return [
        Discrete(3),
        Discrete(3, start=-1),
        Discrete(n=4, dtype=np.int32, start=1),
        Box(low=0.0, high=1.0),
        Box(low=0.0, high=inf, shape=(2, 2)),
        Box(low=np.array([-10.0, 0.0]), high=np.array([10.0, 10.0]), dtype=np.float64),
        Box(low=-inf, high=0.0, shape=(2, 1)),
        Box(low=0.0, high=inf, shape=(2, 1)),
        Box(low=0, high=255, shape=(2, 2, 3), dtype=np.uint8),
        Box(low=np.array([0, 0, 1]), high=np.array([1, 0, 1]), dtype=np.bool_),
        Box(np.array([-inf, -inf, 0, -10]), np.array([inf, 0, inf, 10]), dtype=np.int32),
        MultiDiscrete([2, 2]),
        MultiDiscrete([[2, 3], [3, 2]]),
        MultiDiscrete([2, 2], start=[10, 10]),
        MultiDiscrete([[2, 3], [3, 2]], start=[[10, 20], [30, 40]]),
        MultiDiscrete([2, 3], dtype=np.int8),
        MultiDiscrete([2, 3], dtype=np.uint16),
        MultiBinary(8),
        MultiBinary([2, 3]),
        Text(6),
        Text(min_length=3, max_length=6),
        Text(6, charset="abcdef"),
    ]


def _graphs() -> List[Space]:
    return [
        Graph(node_space=Box(-1, 1, shape=(2,)), edge_space=None),
        Graph(node_space=Box(low=-100, high=100, shape=(3, 4)), edge_space=Discrete(5)),
        Graph(node_space=Discrete(5), edge_space=Box(low=-100, high=100, shape=(3, 4))),
        Graph(node_space=Discrete(3), edge_space=Discrete(4)),
        Graph(
            node_space=Dict({"node_feature_1": Discrete(5), "node_feature_2": MultiBinary(5)}),
            edge_space=Box(low=1, high=4),
        ),
        Graph(node_space=MultiBinary(4), edge_space=None),
        Graph(node_space=MultiDiscrete([3, 4, 2]), edge_space=Discrete(3)),
        Graph(node_space=Tuple((Box(-1, 1, shape=(2,)), Discrete(3))), edge_space=None),
        Graph(node_space=Discrete(4), edge_space=Tuple((Box(0, 1, shape=(2,)), Discrete(3)))),
        Graph(
            node_space=Discrete(3),
            edge_space=Dict({"weight": Box(0, 1, shape=()), "type": Discrete(4)}),
        ),
        Graph(
            node_space=Dict({"pos": Box(-10, 10, shape=(3,)), "label": Discrete(5)}),
            edge_space=Dict({"weight": Box(0, 1, shape=()), "type": Discrete(3)}),
        ),
        Graph(
            node_space=Tuple((Dict({"a": Discrete(3)}), MultiBinary(2))),
            edge_space=Tuple((Discrete(4), Box(0, 1, shape=(2,)))),
        ),
    ]


def composite() -> List[Space]:
    def pair() -> Box:
        return Box(low=np.array([0.0, 0.0]), high=np.array([1.0, 5.0]), dtype=np.float64)

    return [
        Tuple([Discrete(5), Discrete(4)]),
        Tuple((Discrete(5), pair())),
        Tuple((Discrete(5), Tuple((Box(low=0.0, high=1.0, shape=(3,)), Discrete(2))))),
        Tuple((Discrete(3), Dict(position=Box(low=0.0, high=1.0), velocity=Discrete(2)))),
        Tuple((Graph(node_space=Box(-1, 1, shape=(2, 1)), edge_space=None), Discrete(2))),
        Dict({"position": Discrete(5), "velocity": pair()}),
        Dict(position=Discrete(6), velocity=pair()),
        Dict(
            {
                "a": Box(low=0, high=1, shape=(3, 3)),
                "b": Dict(
                    {
                        "b_1": Box(low=-100, high=100, shape=(2,)),
                        "b_2": Box(low=-1, high=1, shape=(2,)),
                    }
                ),
                "c": Discrete(4),
            }
        ),
        Dict(
            a=Dict(
                a=Graph(node_space=Box(-100, 100, shape=(2, 2)), edge_space=None),
                b=Box(-100, 100, shape=(2, 2)),
            ),
            b=Tuple((Box(-100, 100, shape=(2,)), Box(-100, 100, shape=(2,)))),
        ),
        *_graphs(),
        Sequence(Discrete(4)),
        Sequence(Dict({"feature": Box(0, 1, (3,))})),
        Sequence(Graph(node_space=Box(-100, 100, shape=(2, 2)), edge_space=Discrete(4))),
        Sequence(Box(low=0.0, high=1.0), stack=True),
        Sequence(Dict({"a": Box(0, 1, (3,)), "b": Discrete(5)}), stack=True),
        OneOf([Discrete(3), Box(low=0.0, high=1.0)]),
        OneOf([MultiBinary(2), MultiDiscrete([2, 2])]),
    ]


def all_spaces() -> List[Space]:
    """The 50 spaces of gymnasium's TESTING_SPACES, in its order."""
    return fundamental() + composite()


class SpaceEnv(gymnasium.Env):
    """An env whose observation and action space is TESTING_SPACES[index]: it observes seeded
    samples and echoes each action in its info (so values cross both ways)."""

    def __init__(self, index: int) -> None:
        self.observation_space = all_spaces()[index]
        self.action_space = all_spaces()[index]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {"action": action}
