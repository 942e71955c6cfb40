# Sourced by launch/gpu-bundle and tests/gpu/bundle_check.sh: the shared libraries a GPU bundle
# does not carry, as patterns over ldd's names.
# shellcheck disable=SC2034
# What the lent GPU machine provides itself (the driver; cuBLAS and NCCL as its Python's wheels).
gpu_provided_libs='^(libcuda\.so|libcublas\.so|libcublasLt\.so|libnccl\.so|libnvidia-)'
# The C/C++ runtime every Linux machine has.
gpu_runtime_libs='^(linux-vdso\.so|ld-linux-x86-64\.so|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libstdc\+\+\.so|libgcc_s\.so)'
