//! Runs the distributed matmul example (four GPU actors on a local cluster of two workers
//! with two logical GPUs each) and checks what it prints.

use std::collections::HashSet;

use ember_tests::{example_exe, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_matmul_shards_across_four_gpus_and_matches_the_reference() {
    let mut cmd = tokio::process::Command::new(example_exe("distributed_matmul"));
    cmd.env_remove("EMBER_ROLE").env("RUST_LOG", "warn");
    let (code, stdout, stderr) = run_cli(cmd).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");

    // One shard per GPU: four distinct (node, GPU) places, each on the CPU backend here.
    let places: HashSet<&str> = (0..4)
        .map(|i| {
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("shard {i}: ")))
                .unwrap_or_else(|| panic!("no line for shard {i}: {stdout}"));
            assert!(line.ends_with("backend cpu"), "{line}");
            line
        })
        .collect();
    assert_eq!(places.len(), 4, "{stdout}");

    assert!(
        stdout.contains("on 4 GPUs, max |error| vs CPU reference 0e0"),
        "the actors' C is the reference's: {stdout}"
    );
    let builtin = stdout
        .lines()
        .find(|l| l.starts_with("GPU actors: backend cpu"))
        .unwrap_or_else(|| panic!("no line for the GPU actors: {stdout}"));
    assert!(
        builtin.contains("of 67108864 bytes in use")
            && builtin.contains("max |error| vs CPU reference 0e0")
            && builtin.ends_with("same bits as the actors: true"),
        "{builtin}"
    );
}
