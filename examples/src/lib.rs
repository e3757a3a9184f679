//! Ember examples: self-contained programs under `examples/examples/`, each run by the test suite.
