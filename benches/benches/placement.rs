//! Placeholder, replaced by the benchmark work.
//! Placement decisions per second at 1,000 and 10,000 simulated nodes (criterion).
fn main() {}
