//! What the fuzz targets share: their seed inputs.

use std::path::Path;

/// The variable naming the directory where each target writes its seed inputs.
pub const SEEDS_VAR: &str = "EMBER_FUZZ_SEEDS";

/// Writes the seed inputs of fuzz target `target` (real messages of every kind, from
/// `ember_worker::fuzzing::seeds`) into `$EMBER_FUZZ_SEEDS/<target>/`, when that variable is
/// set. Each target calls it as it starts, before libFuzzer reads its corpora, and `run.sh`
/// names that directory as one of them: the seeds always match the messages of the code
/// under test.
pub fn write_seeds(target: &str) {
    let Some(dir) = std::env::var_os(SEEDS_VAR) else {
        return;
    };
    let dir = Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).expect("cannot make the seeds' directory");
    let seeds = ember_worker::fuzzing::seeds();
    let mine = seeds.iter().filter(|(t, _)| *t == target);
    for (i, (_, seed)) in mine.enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("cannot write a seed");
    }
}
