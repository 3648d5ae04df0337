"""Ray's cancel of a task whose result is arriving aborts the driver (why an interrupted Ray sweep cancels nothing).

    python -m experiments.ray_cancel_race --stop cancel       # ray.cancel(force=True): aborts
    python -m experiments.ray_cancel_race --stop cancel-soft  # ray.cancel(force=False): aborts too
    python -m experiments.ray_cancel_race --stop leave        # the references dropped: what the sweep does now
    python -m experiments.ray_cancel_race --stop shutdown --rounds 5  # ray.shutdown(): a local instance per round

The interleaving is forced, not waited for. A task returns many objects, so that the driver
takes a few milliseconds to handle its reply; once the first of them is in (``ray.wait`` with
no timeout says so), the driver stops the task as ``--stop`` says, while the others are still
being stored. In Ray 2.60 ray.cancel then finds the task no longer executing but still pending
and fails it, and completing it afterwards aborts the process: ``Check failed: it !=
submissible_tasks_.end() Tried to complete task that was not pending`` (task_manager.cc:1329,
on stderr and in /tmp/ray/session_*/logs/python-core-driver-*.log), the line a pytest-xdist
worker died of in CI, when an interrupted sweep cancelled a shard that had just finished.
The process then exits before printing "no crash". docs/sweeps.md has the counts seen.
"""

from __future__ import annotations

import argparse
import os

LOCAL = {"address": "local", "num_cpus": 2, "include_dashboard": False, "log_to_driver": False,
         "_node_ip_address": "127.0.0.1"}
RETURNS = 2000  # objects the task returns: the driver stores them one by one, a window of milliseconds


def many(count: int) -> tuple[int, ...]:
    return tuple(range(count))


def one_round(ray, task, stop: str) -> None:
    """Run the task; stop it as ``stop`` says once its reply is being handled."""
    references = task.remote(RETURNS)
    while not ray.wait([references[0]], timeout=0)[0]:  # the first return stored, the others not yet
        pass
    if stop == "shutdown":
        ray.shutdown()
        return
    if stop != "leave":
        ray.cancel(references[-1], force=stop == "cancel")
    try:
        ray.get(references[-1])
    except (ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--stop", choices=["cancel", "cancel-soft", "leave", "shutdown"], default="cancel")
    arguments = parser.parse_args()
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"})
    import ray

    task = ray.remote(num_returns=RETURNS, max_retries=2, retry_exceptions=True)(many)
    for round_number in range(arguments.rounds):
        print(f"round {round_number}", flush=True)
        if not ray.is_initialized():
            ray.init(**LOCAL)
            ray.get(task.remote(RETURNS)[-1])  # a worker started
        one_round(ray, task, arguments.stop)
    print(f"{arguments.rounds} rounds, --stop {arguments.stop}: no crash", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
