"""Gymnasium's own TESTING_SPACES (50 spaces, 15 of them holding Graph values) cross exactly:
the space is rebuilt equal, and seeded values (GraphInstance included, alone and nested in
Tuple, Dict and Sequence) arrive identical, through the codec and through a real server."""

from __future__ import annotations

from typing import Iterator

import pytest
from gymnasium.spaces import GraphInstance

from portal_env import AgentSidePortal
from portal_env.portal.spaces import decode_space, encode_space

from .conftest import ServerProcess, start_server
from .gymnasium_spaces import SpaceEnv, all_spaces
from .test_agent import assert_identical
from .test_codec import roundtrip
from .test_spaces import assert_same_space

SPACES = all_spaces()
IDS = [f"{i}-{space}"[:60] for i, space in enumerate(SPACES)]


def test_the_list_is_gymnasiums_fifty_with_fifteen_holding_graphs():
    assert len(SPACES) == 50
    assert sum("Graph(" in repr(space) for space in SPACES) == 15


@pytest.mark.parametrize("index", range(len(SPACES)), ids=IDS)
def test_space_and_seeded_values_cross_the_codec_exactly(index):
    space = SPACES[index]
    assert_same_space(space, decode_space(roundtrip(encode_space(space))))
    space.seed(index)
    for _ in range(3):
        value = space.sample()
        assert_identical(roundtrip(value), value)


def test_graph_instances_keep_none_edges_and_their_type():
    graph = GraphInstance(nodes=SPACES[0].sample(), edges=None, edge_links=None)
    for value in (graph, (graph, 1), {"g": graph}, (graph, graph)):
        assert_identical(roundtrip(value), value)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handle = start_server(tmp_path_factory.mktemp("spaces"))
    yield handle
    handle.stop()


@pytest.mark.parametrize("index", range(len(SPACES)), ids=IDS)
def test_space_and_seeded_values_cross_a_real_server_both_ways(server, index):
    local = SpaceEnv(index)
    with AgentSidePortal(
        "spaces", ["PortalTest/Space-v0"], {"index": index}, **server.kwargs()
    ) as env:
        assert_same_space(local.observation_space, env.observation_space)
        assert_same_space(local.action_space, env.action_space)
        assert_identical(env.reset(seed=index)[0], local.reset(seed=index)[0])
        action = local.action_space.sample()
        obs, _, _, _, info = env.step(action)
        assert_identical(obs, local.step(action)[0])
        assert_identical(info["action"], action)
