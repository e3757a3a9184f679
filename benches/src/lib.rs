//! Ember's benchmarks. Nothing to link against: the criterion benchmark of placement lives in
//! `benches/placement.rs`, and the whole-cluster load generator mirroring `ray microbenchmark`
//! in `src/bin/microbench.rs`; `compare_ray.sh` runs it beside Ray's own rows.
