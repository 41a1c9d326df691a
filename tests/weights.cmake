# Weights (issue G): safetensors reader/writer, checkpoint directories,
# ModelOpt NVFP4 loading with EP sharding, and interop with the reference
# Python implementation.
epm_add_test(test_safetensors SOURCES unit/test_safetensors.c LABELS cpu)
