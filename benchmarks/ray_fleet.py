"""A Ray fleet's vector env vs direct make_vec to the same servers vs AsyncVectorEnv;
launch-to-ready time, cached and cold.

What it does, in one run on this machine:
1. builds the venv runtimes of examples/cartpole_env (`mycart`) and the built-in `ale`
   into a cache (this process has network);
2. re-runs itself inside `unshare --net` (only loopback: Ray then advertises 127.0.0.1),
   starts a real two-node Ray cluster there (tests/raycluster.py: a head and a second
   raylet, 1 CPU each) and
   - times `pray.launch(NAME, num_servers=2, placement="spread")` to ready from the
     cache (cached), and with an empty cache (cold: the venv is built, but uv installs
     from its own download cache, `UV_OFFLINE=1`, as the namespace has no network: no
     download time is in it), median of R;
   - per env, one fleet of 2 servers (one per node) and, alternating, best of R:
     `fleet.make_vec(num_envs=N)` vs `multiserver.make_vec(addresses=<the same servers>,
     token=fleet.token)` vs gymnasium's `AsyncVectorEnv` of N in-process envs.

Both "nodes" share this machine's 2 cores (and other work), so absolute figures are
this machine's; the fleet/direct ratio is what the fleet costs on the step path.

Run: python benchmarks/ray_fleet.py [--repeats 3] [--num-envs 8] [--no-pong]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXAMPLE = ROOT / "examples" / "cartpole_env"
CASES = [("mycart", "CartPole-v1", 3000), ("ale", "ALE/Pong-v5", 300)]


def steps_per_s(vec: Any, steps: int) -> float:
    vec.reset(seed=0)
    vec.action_space.seed(0)
    actions = [vec.action_space.sample() for _ in range(64)]
    for i in range(20):  # warm up
        vec.step(actions[i % 64])
    began = time.perf_counter()
    for i in range(steps):
        vec.step(actions[i % 64])
    return steps * vec.num_envs / (time.perf_counter() - began)


def async_vec(env_id: str, num_envs: int) -> Any:
    import gymnasium

    if env_id.startswith("ALE/"):
        import ale_py

        gymnasium.register_envs(ale_py)
    return gymnasium.vector.AsyncVectorEnv([lambda: gymnasium.make(env_id)] * num_envs)


def launch_times(pray: Any, env_dir: Path, cache: str, state: str, repeats: int) -> List[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fleet = pray.launch("mycart", path=env_dir, backend="venv", num_servers=2,
                            cpus_per_server=0.5, cache_dir=cache, state_root=state)  # fmt: skip
        times.append(time.perf_counter() - began)
        fleet.stop()
    return times


def cold_times(pray: Any, env_dir: Path, work: Path, state: str, repeats: int) -> List[float]:
    times = []
    for i in range(repeats):
        cold = work / f"cold-{i}"  # an empty cache: both launchers build (one waits on the lock)
        cold.mkdir()
        times += launch_times(pray, env_dir, str(cold), state, 1)
        if not any((cold / "venv").glob("*/bin/python")):
            raise RuntimeError(f"the cold launch built no venv in {cold}")
    return times


def vector_rows(pray: Any, env_dir: Path, args: argparse.Namespace, cache: str, state: str):
    from portal_env.portal.vector import multiserver

    rows = []
    for name, env_id, steps in CASES if args.pong else CASES[:1]:
        path = env_dir if name == "mycart" else None
        with pray.launch(name, path=path, backend="venv", num_servers=2, cpus_per_server=0.5,
                         cache_dir=cache, state_root=state) as fleet:  # fmt: skip
            n = args.num_envs
            vecs = {
                "fleet": fleet.make_vec(num_envs=n, env_args=[env_id]),
                "direct": multiserver.make_vec(name, n, [env_id], token=fleet.token,
                                            addresses=[a for _, a in fleet.endpoints]),
                "async": async_vec(env_id, n),
            }  # fmt: skip
            best = dict.fromkeys(vecs, 0.0)
            keys = list(vecs)
            for r in range(args.repeats):  # alternating, in a rotating order: drift hits all alike
                for key in keys[r % 3 :] + keys[: r % 3]:
                    best[key] = max(best[key], steps_per_s(vecs[key], steps))
            nodes = len({node for node, _ in fleet.endpoints})
            for vec in vecs.values():
                vec.close()
        rows.append(dict(env=env_id, num_envs=n, nodes=nodes, **best))
    return rows


def inner(args: argparse.Namespace) -> None:
    from portal_env import ray as pray
    from tests.raycluster import RayCluster

    work = Path(args.work)
    cache, state = args.cache, f"/tmp/pef-b{os.getpid()}"
    cluster = RayCluster(work)
    began = time.perf_counter()
    try:
        cluster.start()
        result: Dict[str, Any] = {"cluster_s": time.perf_counter() - began}
        env_dir = work / "cartpole_env"
        result["cached"] = launch_times(pray, env_dir, cache, state, args.repeats)
        try:
            result["cold"] = cold_times(pray, env_dir, work, state, args.repeats)
        except Exception as exc:  # noqa: BLE001 - reported in the table, not fatal
            result["cold_error"] = str(exc).splitlines()[0][:300]
        result["rows"] = vector_rows(pray, env_dir, args, cache, state)
    finally:
        cluster.close()
        shutil.rmtree(state, ignore_errors=True)
    Path(args.result).write_text(json.dumps(result))


def outer(args: argparse.Namespace) -> None:
    from portal_env.serving import lifecycle
    from tests.raycluster import token_env

    work = Path(tempfile.mkdtemp(prefix="ray-fleet-bench-"))
    cache = work / "cache"
    env = dict(os.environ, PORTAL_ENV_CACHE_DIR=str(cache), PORTAL_ENV_STATE_DIR=str(work))
    os.environ.update(env)
    shutil.copytree(EXAMPLE, work / "cartpole_env")
    lifecycle.build("mycart", path=work / "cartpole_env", backend="venv")
    if args.pong:
        lifecycle.build("ale", backend="venv")
    env.update(token_env(), PORTAL_ENV_OFFLINE="0", UV_OFFLINE="1")  # cold: uv's own cache
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = work / "result.json"
    me = [sys.executable, __file__, "--inner", "--work", str(work), "--cache", str(cache),
          "--result", str(result), "--repeats", str(args.repeats),
          "--num-envs", str(args.num_envs)] + ([] if args.pong else ["--no-pong"])  # fmt: skip
    command = ["unshare", "--net", "bash", "-c", 'ip link set lo up && exec "$@"', "-", *me]
    subprocess.run(command, env=env, cwd=ROOT, check=True, timeout=3000)
    report(json.loads(result.read_text()), args)
    shutil.rmtree(work, ignore_errors=True)


def report(result: Dict[str, Any], args: argparse.Namespace) -> None:
    print(f"two-node Ray cluster (head + raylet, 1 CPU each) up in {result['cluster_s']:.1f}s")
    print(f"\nlaunch(num_servers=2, placement='spread') to ready, {args.repeats} runs")
    print(f"{'runtime':<8} {'median s':>9} {'min s':>7} {'max s':>7}")
    for key in ("cached", "cold"):
        times = result.get(key)
        if times:
            print(f"{key:<8} {statistics.median(times):>9.2f} {min(times):>7.2f} "
                  f"{max(times):>7.2f}")  # fmt: skip
        else:
            print(f"{key:<8} not measured: {result.get(key + '_error', '')}")
    print(f"\nsteps/s (env steps), 2 servers on 2 nodes; best of {args.repeats}")
    print(f"{'env':<13} {'envs':>4} {'nodes':>5} {'fleet':>9} {'direct':>9} {'async':>9} "
          f"{'fleet/direct':>12} {'fleet/async':>11}")  # fmt: skip
    for r in result["rows"]:
        print(f"{r['env']:<13} {r['num_envs']:>4} {r['nodes']:>5} {r['fleet']:>9.0f} "
              f"{r['direct']:>9.0f} {r['async']:>9.0f} {r['fleet'] / r['direct']:>12.2f} "
              f"{r['fleet'] / r['async']:>11.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--no-pong", dest="pong", action="store_false")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
    else:
        if os.geteuid() != 0 or not shutil.which("unshare"):
            sys.exit("needs root and unshare (a loopback-only network namespace for Ray)")
        outer(args)


if __name__ == "__main__":
    main()
