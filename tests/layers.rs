//! The crates' layers (ARCHITECTURE.md, "Boundaries"): which crates link the head. Workers,
//! and clients built without the `local` feature (a program that only connects), link no
//! head code and none of its dependencies (the Python package's extension is the `ember`
//! command and embeds local clusters, so it takes the client whole); only the head links the
//! object store; the command line's own crates (clap, anyhow, indicatif) come only with the
//! client's `cli` feature. Read from `cargo tree` over this workspace's lock file.

use std::process::Command;

/// The normal (not dev, not build) dependencies of `package`, one crate name a line.
fn links(package: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args(["tree", "--locked", "--manifest-path", manifest])
        .args([
            "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", package,
        ])
        .args(extra)
        .output()
        .expect("cannot run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_links_no_head(package: &str, extra: &[&str]) {
    let links = links(package, extra);
    assert!(
        links.iter().any(|c| c == "ember-core"),
        "{package} should link ember-core: {links:?}"
    );
    for head in ["ember-head", "ember-head-state", "object_store"] {
        assert!(
            !links.iter().any(|c| c == head),
            "{package} {extra:?} links {head}"
        );
    }
}

#[test]
fn workers_link_no_head() {
    assert_links_no_head("ember-worker", &[]);
}

#[test]
fn a_client_without_the_local_feature_links_no_head() {
    assert_links_no_head("ember-client", &["--no-default-features"]);
}

#[test]
fn the_command_lines_crates_come_only_with_the_cli_feature() {
    let cli_only = ["clap", "anyhow", "indicatif"];
    let without = links(
        "ember-client",
        &["--no-default-features", "--features", "local,kubernetes"],
    );
    for c in cli_only {
        assert!(
            !without.iter().any(|l| l == c),
            "without cli, {c}: {without:?}"
        );
    }
    let with = links("ember-client", &[]);
    for c in cli_only {
        assert!(with.iter().any(|l| l == c), "with cli, no {c}: {with:?}");
    }
}

#[test]
fn the_local_feature_brings_the_head_and_only_the_head_links_the_object_store() {
    let client = links("ember-client", &[]);
    assert!(client.iter().any(|c| c == "ember-head"), "{client:?}");
    let state = links("ember-head-state", &[]);
    assert!(!state.iter().any(|c| c == "object_store"), "{state:?}");
    let head = links("ember-head", &[]);
    assert!(head.iter().any(|c| c == "object_store"), "{head:?}");
}
