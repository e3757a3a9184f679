//! `ember head` refuses a state directory whose journal it cannot use, and says which file:
//! one that is not a journal (garbage, or a real journal cut short), one of another format
//! version (naming both versions), and one a running head holds (which keeps serving). Each
//! refusal leaves the file as it was.

use std::path::{Path, PathBuf};

use ember_head_state::journal::Table;
use ember_tests::{ember_exe, run_cli, within, TestCluster};
use redb::ReadableTable;

/// Runs `ember head` on `state` (on a free port) to its exit: (exit code, stderr).
async fn head_on(state: &Path) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(ember_exe());
    cmd.args(["head", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env_remove("EMBER_ROLE")
        .env("RUST_LOG", "warn");
    let (code, _, stderr) = run_cli(cmd).await;
    (code, stderr)
}

fn journal(state: &Path) -> PathBuf {
    state.join(ember_head::journal::FILE_NAME)
}

/// Asserts `ember head` refuses `state`, naming its journal and every one of `also`, and leaves
/// the journal's bytes as they were.
async fn refused(state: &Path, also: &[&str]) -> String {
    let path = journal(state);
    let before = std::fs::read(&path).expect("the journal");
    let (code, stderr) = head_on(state).await;
    assert_ne!(
        code,
        0,
        "`ember head` started on {}:\n{stderr}",
        path.display()
    );
    assert!(
        stderr.contains(&path.display().to_string()),
        "the refusal names the file:\n{stderr}"
    );
    for word in also {
        assert!(
            stderr.contains(word),
            "the refusal says {word:?}:\n{stderr}"
        );
    }
    assert!(
        std::fs::read(&path).expect("the journal") == before,
        "the refused journal was changed"
    );
    stderr
}

/// A state directory with a real journal in it: a head started there and SIGKILLed.
async fn used_state_dir() -> TestCluster {
    let mut tc = TestCluster::start().await;
    tc.kill_head();
    tc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(journal(&state), vec![0x5a; 64 * 1024]).unwrap();
    refused(&state, &["cannot be read"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_cut_short_is_refused() {
    let tc = used_state_dir().await;
    let state = tc.state_dir();
    let bytes = std::fs::read(journal(&state)).unwrap();
    assert!(
        bytes.len() > 4096,
        "a real journal of {} bytes",
        bytes.len()
    );
    std::fs::write(journal(&state), &bytes[..bytes.len() / 2]).unwrap();
    refused(&state, &["cannot open the head's journal"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_another_format_version_is_refused_naming_both() {
    let tc = used_state_dir().await;
    let state = tc.state_dir();
    {
        // The meta row as a head of version 99 would have written it.
        let db = redb::Database::open(journal(&state)).expect("a real journal");
        let meta: redb::TableDefinition<'_, u64, &[u8]> =
            redb::TableDefinition::new(Table::Meta.name());
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(meta).unwrap();
            assert!(table.get(0).unwrap().is_some(), "the format row is key 0");
            table.insert(0, &99u64.to_le_bytes()[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let ours = format!("version {}", ember_head::journal::FORMAT_VERSION);
    refused(&state, &["version 99", &ours]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_head_on_a_running_heads_state_directory_is_refused() {
    let tc = TestCluster::start().await;
    let cluster = tc.connect().await;
    refused(&tc.state_dir(), &["in use by another head"]).await;
    // The first head serves on: its clients' requests are answered.
    within("status", cluster.status())
        .await
        .expect("the first head still answers");
    let again = tc.connect().await;
    within("status", again.status())
        .await
        .expect("and takes new clients");
}
