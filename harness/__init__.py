"""What tests and benchmarks share: helpers (``harness.helpers``), the real peers they
start on loopback (``harness.peers``), the seeded test models (``harness.synthetic``)
and the fuzzing hooks (``harness.fuzz_hooks``).  Nothing here is imported by the
gateway, the exporter or the embedded Triton."""
