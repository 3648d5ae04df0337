set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 ECONSPIN_TEST_DEVICE=cuda
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 60 python3 -m pytest -q -n 2 -p no:cacheprovider "tests/test_traced_blocks.py::test_the_traced_blocks_on_a_gpu_give_the_blocks_results_and_the_eager_round" > $OUT/tests.log 2>&1; echo "tests: exit $?"; tail -2 $OUT/tests.log
timeout 130 python3 -m experiments.gpu_check --measure triton --out $OUT > $OUT/triton.log 2>&1; echo "triton: exit $?"
timeout 110 python3 -m experiments.gpu_block_pass --device cuda --shapes 1x16384,1x32768,1x65536 --rows 512,1024,2048,4096 --modes expected --repeats 7 --json $OUT/block_rows_cuda.json > $OUT/block_rows.log 2>&1; echo "block rows: exit $?"; tail -1 $OUT/block_rows.log
timeout 70 python3 -m econspin bench --device cuda --baselines none --sizes 16384,65536 --batches 1 --kernels fused --compile default --repeats 5 --json $OUT/compiled_cuda.json > $OUT/compiled.log 2>&1; echo "compiled: exit $?"; tail -12 $OUT/compiled.log
