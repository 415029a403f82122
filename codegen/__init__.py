"""Fixed-point firmware of one NCA cell: formats (the one definition), quantiser,
numba golden model, C emitter, build/run/measure on host, Cortex-M0 (QEMU) and
AVR (simavr), the swarm's "fixed" and "firmware" cell backends, nca-codegen."""
