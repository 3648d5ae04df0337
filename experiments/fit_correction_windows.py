"""The ffn correction's fit against its teacher-forcing window (docs/validation.md, section 10).

human_vs_ai at N = 64 (51 humans at T = 1, 13 AI agents at T_ai = 0.3), 128 replicas, 20
rounds, seed 0: the three ensembles of ``econspin fit-correction`` (the fitted one, 128 other
replicas of the same disorder, the scenario at seed 1) sampled once, then one fit per
``WINDOW:EPOCHS`` given, each printed with its RMS per-agent errors. Run (1 torch thread):

    python -m experiments.fit_correction_windows 1:1500 4:1500 8:1000 20:500
"""

from __future__ import annotations

import argparse
import time

import torch

from econspin import Scenario
from econspin.fitting import fit_correction, sample_ensemble

SMALL_HUMAN_VS_AI = {"populations.human.count": 51, "populations.ai.count": 13, "populations.ai.temperature": 0.3}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="WINDOW:EPOCHS, one fit each")
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scenario = Scenario.from_yaml("scenarios/human_vs_ai.yaml").with_overrides(SMALL_HUMAN_VS_AI)
    started = time.perf_counter()
    train = sample_ensemble(scenario, args.replicas, args.steps)
    scored = {
        "held_out_replicas": sample_ensemble(scenario, args.replicas, args.steps, first_replica=args.replicas),
        "other_seed": sample_ensemble(scenario.with_run_settings(seed=1), args.replicas, args.steps),
    }
    print(f"three ensembles sampled in {time.perf_counter() - started:.1f} s", flush=True)
    for run in args.runs:
        window, epochs = (int(part) for part in run.split(":"))
        started = time.perf_counter()
        fit = fit_correction(train, scored, epochs, window)
        print(f"window {window}, {epochs} epochs: {time.perf_counter() - started:.1f} s, "
              f"loss {fit.losses[0]:.4f} -> {fit.losses[-1]:.4f}", flush=True)
        for label, errors in fit.errors.items():
            print(f"  {label:18s} " + ", ".join(f"{name} {value:.4f}" for name, value in errors.items()), flush=True)


if __name__ == "__main__":
    main()
