//! Shared nothing: the examples are self-contained programs under `examples/examples/`.
