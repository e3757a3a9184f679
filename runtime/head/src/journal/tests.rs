//! The journal on disk: what is committed comes back, and what is not a journal of this
//! version, or is in use, is refused with the file's path.

use ember_core::ids::{ActorId, NodeId};
use ember_core::proto::{ActorSpec, CheckpointPolicy, Placement, RestartPolicy, WorkerHello};
use ember_head_state::journal::{
    ActorRecord, Change, CheckpointRecord, GroupRecord, MemoryTables, NodeRecord, Owner, Table,
};

use super::{definition, Journal, JournalError, META_FORMAT};

fn every_kind_of_change() -> Vec<Change> {
    let hello = WorkerHello {
        name: "worker-1".into(),
        resources: Default::default(),
        task_types: vec!["train".into()],
        actor_types: vec!["Trainer".into()],
        address: "10.0.0.1:7100".into(),
        rejoin: None,
        launch: None,
    };
    let spec = ActorSpec {
        type_name: "Trainer".into(),
        args: vec![1, 2, 3],
        placement: Placement::default(),
        restart: RestartPolicy {
            max_restarts: 3,
            max_task_retries: 1,
        },
        checkpoint: CheckpointPolicy {
            enabled: true,
            every_calls: 1,
            every_ms: 0,
        },
    };
    let actor = |incarnation, node, dead: Option<&str>| ActorRecord {
        spec: spec.clone(),
        owner: Owner { epoch: 1, conn: 9 },
        incarnation,
        restarts: incarnation - 1,
        node,
        dead: dead.map(String::from),
    };
    vec![
        Change::Epoch(1),
        Change::IdsReserved(1024),
        Change::Node {
            node: NodeId(1),
            record: NodeRecord {
                hello: hello.clone(),
            },
        },
        Change::Node {
            node: NodeId(2),
            record: NodeRecord { hello },
        },
        Change::NodeGone { node: NodeId(2) },
        Change::Actor {
            actor: ActorId(3),
            record: actor(1, Some(NodeId(1)), None),
        },
        Change::Actor {
            actor: ActorId(3),
            record: actor(2, None, None),
        },
        Change::Actor {
            actor: ActorId(4),
            record: actor(1, None, Some("used all its restarts")),
        },
        Change::Checkpoint {
            actor: ActorId(3),
            record: CheckpointRecord {
                seq: 5,
                sha256: [5; 32],
            },
        },
        Change::Checkpoint {
            actor: ActorId(4),
            record: CheckpointRecord {
                seq: 1,
                sha256: [1; 32],
            },
        },
        Change::Actor {
            actor: ActorId(5),
            record: actor(1, Some(NodeId(1)), None),
        },
        Change::ActorGone { actor: ActorId(5) },
        Change::CheckpointGone { actor: ActorId(4) },
        Change::Group {
            key: 6,
            record: GroupRecord {
                name: "dp".into(),
                generation: 1,
                members: vec![ActorId(4), ActorId(3)],
                broken: None,
            },
        },
        Change::Group {
            key: 6,
            record: GroupRecord {
                name: "dp".into(),
                generation: 1,
                members: vec![ActorId(4), ActorId(3)],
                broken: Some("rank 1 left".into()),
            },
        },
        Change::Group {
            key: 7,
            record: GroupRecord {
                name: "tp".into(),
                generation: 12,
                members: vec![ActorId(3)],
                broken: None,
            },
        },
    ]
}

#[test]
fn every_kind_of_record_comes_back_as_memory_tables_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::FILE_NAME);
    let changes = every_kind_of_change();
    {
        let (journal, empty) = Journal::open(&path).unwrap();
        assert_eq!(empty.epoch, 0);
        assert!(empty.actors.is_empty());
        // Two commits, as the shell makes them.
        journal.commit(&changes[..4]).unwrap();
        journal.commit(&changes[4..]).unwrap();
    }
    let (_journal, on_disk) = Journal::open(&path).unwrap();
    let mut memory = MemoryTables::new();
    memory.commit(&changes).unwrap();
    let in_memory = memory.read().unwrap();
    assert_eq!(format!("{on_disk:?}"), format!("{in_memory:?}"));
    assert_eq!((on_disk.epoch, on_disk.ids_reserved), (1, 1024));
    assert_eq!(
        on_disk.nodes.keys().copied().collect::<Vec<_>>(),
        [NodeId(1)]
    );
    assert_eq!(
        on_disk.actors.keys().copied().collect::<Vec<_>>(),
        [ActorId(3), ActorId(4)]
    );
    assert_eq!(on_disk.actors[&ActorId(3)].incarnation, 2);
    assert_eq!(on_disk.checkpoints[&ActorId(3)].seq, 5);
    assert!(!on_disk.checkpoints.contains_key(&ActorId(4)));
    assert_eq!(
        on_disk.groups.values().cloned().collect::<Vec<_>>(),
        [
            GroupRecord {
                name: "dp".into(),
                generation: 1,
                members: vec![ActorId(4), ActorId(3)],
                broken: Some("rank 1 left".into()),
            },
            GroupRecord {
                name: "tp".into(),
                generation: 12,
                members: vec![ActorId(3)],
                broken: None,
            },
        ]
    );
}

#[test]
fn a_file_that_is_not_a_journal_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::FILE_NAME);
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let e = Journal::open(&path).unwrap_err();
    assert!(matches!(e, JournalError::Unreadable { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x5a; 64 * 1024],
        "the file is left as it was"
    );
}

#[test]
fn a_journal_cut_short_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::FILE_NAME);
    {
        let (journal, _) = Journal::open(&path).unwrap();
        journal.commit(&every_kind_of_change()).unwrap();
    }
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let e = Journal::open(&path).unwrap_err();
    assert!(matches!(e, JournalError::Unreadable { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        whole[..whole.len() / 2],
        "the file is left as it was"
    );
}

#[test]
fn a_journal_of_another_format_version_is_refused() {
    // A later version, and the one before this (it has no table of groups).
    for version in [99, super::FORMAT_VERSION - 1] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::FILE_NAME);
        {
            let (journal, _) = Journal::open(&path).unwrap();
            journal.commit(&[Change::Epoch(3)]).unwrap();
            let txn = journal.db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(definition(Table::Meta)).unwrap();
                meta.insert(META_FORMAT, &version.to_le_bytes()[..])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let e = Journal::open(&path).unwrap_err();
        assert!(
            matches!(e, JournalError::WrongVersion { found, .. } if found == version),
            "{e:?}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}

#[test]
fn a_second_head_on_one_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(super::FILE_NAME);
    let (first, _) = Journal::open(&path).unwrap();
    let e = Journal::open(&path).unwrap_err();
    assert!(matches!(e, JournalError::InUse { .. }), "{e:?}");
    assert!(e.to_string().contains("in use by another head"), "{e}");
    drop(first);
    Journal::open(&path).expect("free once the first is closed");
}
