"""portal_env.ray fleets on a real two-node Ray cluster in a loopback-only network namespace.

Ray advertises this machine's non-loopback address unless it runs in a namespace that
has only loopback, which a running pytest process cannot enter. So this module runs
tests/ray_cases.py as one pytest session under `unshare --net` (the runtime prebuilt
here first, where PyPI is reachable) and reports each of its cases here; a case that
did not run, or was skipped there, fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Tuple

import pytest

from .conftest import EXAMPLE_ENV, ROOT
from .raycluster import token_env

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

CASES = [
    "test_the_cluster_has_two_nodes_advertised_on_loopback",
    "test_spread_servers_land_on_both_nodes_on_the_nodes_ray_address",
    "test_a_seeded_fleet_trajectory_is_bit_identical_to_sync_vector_env",
    "test_fleet_make_is_one_env_on_one_server",
    "test_a_wrong_token_is_refused_and_the_token_is_on_no_command_line",
    "test_a_killed_server_loses_its_step_comes_back_and_reset_works",
    "test_a_killed_launcher_is_restarted_by_ray_and_found_at_its_new_address",
    "test_stop_leaves_no_server_process_socket_state_or_actor",
    "test_driver_exit_leaves_no_server_process_or_actor",
    "test_pack_places_every_server_on_one_node",
    "test_bad_arguments_are_refused_naming_the_value",
    "test_a_server_that_cannot_start_fails_the_launch_with_its_output",
    "test_a_stopped_raylet_s_servers_come_back_on_the_other_node",
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, shared_cache_dir: Path) -> Dict:
    """{case: (outcome, text)} of one run of ray_cases.py inside `unshare --net`."""
    pytest.importorskip("ray", reason="install the test extra: pip install -e '.[test]'")
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to make a loopback-only network namespace")
    from portal_env.serving import lifecycle

    work = tmp_path_factory.mktemp("ray-run")
    env_copy = work / "cartpole_env"
    shutil.copytree(EXAMPLE_ENV, env_copy)
    state = str(work / "state")  # not the user's state dir (a module fixture has no monkeypatch)
    previous = os.environ.get("PORTAL_ENV_STATE_DIR")
    os.environ["PORTAL_ENV_STATE_DIR"] = state
    try:
        lifecycle.build("mycart", path=env_copy, backend="venv")  # with network, into the cache
    finally:
        if previous is None:
            del os.environ["PORTAL_ENV_STATE_DIR"]
        else:
            os.environ["PORTAL_ENV_STATE_DIR"] = previous
    report = work / "report.xml"
    env = dict(os.environ, PORTAL_ENV_FLEET_TEST_CACHE=str(shared_cache_dir), **token_env())
    env["PORTAL_ENV_STATE_DIR"] = state
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    inner = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
             "timeout=600", f"--junitxml={report}", "tests/ray_cases.py"]  # fmt: skip
    command = ["unshare", "--net", "bash", "-c", 'ip link set lo up && exec "$@"', "-", *inner]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1400)
    print(run.stdout[-20000:], run.stderr[-5000:])
    if not report.exists():
        pytest.fail(f"the namespace run wrote no report (exit {run.returncode}):\n"
                    f"{run.stdout[-5000:]}\n{run.stderr[-5000:]}")  # fmt: skip
    return _parse(report)


def _parse(report: Path) -> Dict[str, Tuple[str, str]]:
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                text = (child.get("message") or "") + "\n" + (child.text or "")
        results[case.get("name")] = (outcome, text)
    return results


def test_the_namespace_run_ran_exactly_the_listed_cases(outcomes: Dict):
    assert sorted(outcomes) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_in_namespace(outcomes: Dict, case: str):
    outcome, text = outcomes.get(case, ("not run", ""))
    assert outcome == "passed", f"{case}: {outcome}\n{text[-6000:]}"
