export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 ECONSPIN_TEST_DEVICE=cuda
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
P="python3 -m pytest -q -n 0 -p no:cacheprovider -x"
F="tests/test_flex.py::test_the_passes_on_a_gpu_equal_the_fused_kernel"
timeout 70 python3 -m experiments.gpu_profile --shapes 1x16384,64x256,1x65536 --kernels fused,triton --json $OUT/profile.json > $OUT/profile.log 2>&1; echo profile $?
timeout 30 python3 -m experiments.gpu_profile --shapes 64x256 --kernels fused --mode sampled --json $OUT/profile_sampled.json > $OUT/profile_sampled.log 2>&1; echo sampled $?
timeout 50 $P "$F" > $OUT/flex_alone.log 2>&1; echo alone $?; tail -1 $OUT/flex_alone.log
timeout 50 $P tests/test_device_rollout.py::test_the_recorder_watches_inside_flex_attention "$F" > $OUT/flex_after_recorder.log 2>&1; echo after_recorder $?; tail -1 $OUT/flex_after_recorder.log
timeout 50 $P "tests/test_device_rollout.py::test_no_host_synchronisation_inside_a_chunk[expected flex]" "$F" > $OUT/flex_after_case.log 2>&1; echo after_case $?; tail -1 $OUT/flex_after_case.log
