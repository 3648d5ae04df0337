# call 3 (60 s): the million step with run.memory_budget_mb raised on the device's copy of the script (its
# default, 1 GiB, refused N = 10^6 in call 1); experiments/gpu_million.py now sets it itself (--memory-budget-mb)
sed -i 's/^    scenario = bench_scenario(agents)$/    scenario = bench_scenario(agents); scenario = scenario.model_copy(update={"run": scenario.run.model_copy(update={"memory_budget_mb": 100000})})/' experiments/gpu_million.py
timeout 140 python3 -m experiments.gpu_million --kernels fused,triton --json "$OUT/million_cuda.json"
