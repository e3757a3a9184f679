//! Entry points for the fuzz targets in `tests/fuzz/`; not part of Ember's API.
//!
//! Each function feeds arbitrary bytes to a decoder that a worker or executor process runs on
//! bytes from another process, the very function the process calls, then does what the
//! process does next with a value that decoded, where that is cheap. Decoders that are
//! private to this crate are reached only through here. No input may make any of them
//! panic; the checks they make on decoded values panic, so that the fuzzer reports them.

use ember_core::proto::{
    decode, decode_hello, encode, encode_hello, read_frame, ActorEndpoints, LeaseEndpoints,
    Welcome, Wire, HELLO_LIMIT,
};
use ember_core::security::{accept_hello, token_matches, HelloListener};
use ember_kernels::Device;

use crate::collective::link::{recv_segment, send_segment, Rx, Tag, Tx, HEADER};
use crate::executor::checkpoint::{CheckpointImage, ReplyLog, REPLIES_KEPT};
use crate::executor::protocol::{ExecCommand, ExecReply, ExecRequest};
use crate::gpu_actor::actor::GpuActor;
use crate::gpu_actor::methods::{
    Alloc, CompileUser, Free, Get, GpuMethod, Info, Launch, LaunchUser, Put,
};
use crate::gpu_actor::GpuActorError;
use crate::registry::ActorInstance;

/// Decodes `bytes` as a `T` with [`decode`], the decoder of every message, both from aligned
/// memory and from memory one byte off (which `decode` copies first); the two must agree.
/// When the bytes decode, the value is archived again, and that archive must decode and
/// archive to the same bytes: a value a process accepts is one it can pass on. Returns the
/// value, or `None` when the bytes are not a valid archive of `T`.
pub fn round_trip<T: Wire>(bytes: &[u8]) -> Option<T> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let mut shifted = Vec::with_capacity(bytes.len() + 1);
    shifted.push(0u8);
    shifted.extend_from_slice(bytes);
    let value = decode::<T>(&aligned);
    let unaligned = decode::<T>(&shifted[1..]);
    let value = match (value, unaligned) {
        (Ok(value), Ok(other)) => {
            let (a, b) = (archive(&value), archive(&other));
            assert!(
                a == b,
                "aligned and unaligned bytes decoded to different values"
            );
            value
        }
        (Err(_), Err(_)) => return None,
        (a, b) => panic!(
            "aligned and unaligned bytes disagree: {:?} and {:?}",
            a.err(),
            b.err()
        ),
    };
    let first = archive(&value);
    let again = decode::<T>(&first)
        .unwrap_or_else(|e| panic!("a decoded value archived again does not decode: {e}"));
    assert!(
        archive(&again) == first,
        "a decoded value archived twice gives different bytes"
    );
    Some(value)
}

fn archive<T: Wire>(value: &T) -> Vec<u8> {
    encode(value)
        .unwrap_or_else(|e| panic!("a decoded value cannot be archived again: {e}"))
        .to_vec()
}

/// An executor reads a request from its worker (`executor/process.rs`): decodes it as an
/// `ExecCommand` and takes its epoch and its request's id. Returns whether the bytes decoded.
pub fn exec_request(bytes: &[u8]) -> bool {
    match round_trip::<ExecCommand>(bytes) {
        Some(command) => {
            std::hint::black_box((command.epoch, command.request.id()));
            true
        }
        None => false,
    }
}

/// A worker reads its executor's reply (`executor/pool.rs`): decodes it as an `ExecReply`,
/// then decodes a successful reply's payload as each of the answers the worker agent reads
/// there (`agent.rs`: a lease's endpoints, an actor's endpoints, a seal's sequence number).
/// Returns whether the reply decoded.
pub fn exec_reply(bytes: &[u8]) -> bool {
    let Some(reply) = round_trip::<ExecReply>(bytes) else {
        return false;
    };
    std::hint::black_box(reply.id);
    if let Ok(payload) = &reply.result {
        round_trip::<LeaseEndpoints>(payload);
        round_trip::<ActorEndpoints>(payload);
        round_trip::<Option<u64>>(payload);
    }
    true
}

/// An actor's process resumes from a checkpoint image the head sent it
/// (`executor/actor_host.rs`): decodes it as a `CheckpointImage` and rebuilds the log of
/// recorded replies from it, which must answer every call it kept and carry them again
/// unchanged in the next checkpoint. Returns whether the image decoded.
pub fn checkpoint_image(bytes: &[u8]) -> bool {
    let Some(image) = round_trip::<CheckpointImage>(bytes) else {
        return false;
    };
    std::hint::black_box((image.seq, image.state.len()));
    let log = ReplyLog::from_image(image.replies);
    let kept = log.to_image();
    assert!(kept.len() <= REPLIES_KEPT, "the reply log kept too many");
    for (caller, seq, reply) in &kept {
        assert_eq!(
            log.get(*caller, *seq),
            Some(reply),
            "a kept reply is not answered"
        );
    }
    assert_eq!(
        ReplyLog::from_image(kept.clone()).to_image(),
        kept,
        "the kept replies change when carried again"
    );
    true
}

/// The token [`hello`] expects.
pub const HELLO_TOKEN: &str = "t0ken";

/// Every listener reads a connection's first frame as a hello
/// (`ember_core::security::accept_hello`: the head, an actor's and a task lease's
/// endpoints, a group's link sockets). `bytes` is the frame's body: it is decoded with
/// `decode_hello`, and a hello that decodes must encode and decode again to the same bytes.
/// Then the same frame is offered to `accept_hello` at every kind of listener, expecting
/// [`HELLO_TOKEN`]: it must accept exactly the hellos that decode, carry the token and come
/// from a role that listener serves, write nothing back for those, and tell everyone else
/// why in a `Welcome::Refused` that the sender can read. Returns whether the bytes decoded.
pub fn hello(bytes: &[u8]) -> bool {
    let decoded = decode_hello(bytes);
    if let Ok(hello) = &decoded {
        let again = encode_hello(hello)
            .unwrap_or_else(|e| panic!("a decoded hello cannot be encoded again: {e}"));
        let back = decode_hello(&again)
            .unwrap_or_else(|e| panic!("a hello encoded again does not decode: {e}"));
        assert!(
            encode_hello(&back).ok().as_deref() == Some(&again[..]),
            "a decoded hello encoded twice gives different bytes"
        );
    }
    let Ok(len) = u32::try_from(bytes.len()) else {
        return decoded.is_ok();
    };
    let mut frame = len.to_le_bytes().to_vec();
    frame.extend_from_slice(bytes);
    for listener in [
        HelloListener::Head,
        HelloListener::ActorEndpoint,
        HelloListener::Calls,
        HelloListener::GroupLinks,
    ] {
        let (mut rd, mut answer) = (&frame[..], Vec::new());
        let outcome =
            futures::executor::block_on(accept_hello(&mut rd, &mut answer, HELLO_TOKEN, listener));
        let welcome = match &decoded {
            Ok(hello) => token_matches(HELLO_TOKEN, &hello.token) && listener.accepts(&hello.role),
            Err(_) => false,
        };
        match outcome {
            Ok(_) => {
                assert!(welcome, "{listener:?} accepted a hello it must refuse");
                assert!(answer.is_empty(), "an accepted hello was answered already");
            }
            Err(refused) => {
                assert!(!welcome, "{listener:?} refused a good hello: {refused}");
                let mut told = &answer[..];
                let read =
                    futures::executor::block_on(read_frame::<_, Welcome>(&mut told, HELLO_LIMIT));
                match read {
                    Ok(Some(Welcome::Refused { reason })) => assert_eq!(reason, refused.reason),
                    other => panic!("a refused sender reads {other:?}"),
                }
            }
        }
    }
    decoded.is_ok()
}

/// A rank reads segments from a peer's link (`collective/link.rs`). The first 14 bytes say
/// what this rank expects: the operation (8 bytes), its signature (4) and the segment's
/// length (2, little-endian); the rest is what the peer sent. Segments are read until one
/// is refused or the bytes end; each one received is sent back through a link and must
/// arrive unchanged. Returns how many segments were received.
pub fn link_segments(bytes: &[u8]) -> usize {
    let Some((expect, stream)) = bytes.split_first_chunk::<14>() else {
        return 0;
    };
    let (op, rest) = expect.split_first_chunk::<8>().expect("14 bytes hold 8");
    let (signature, len) = rest.split_first_chunk::<4>().expect("6 bytes hold 4");
    let tag = Tag {
        op: u64::from_le_bytes(*op),
        signature: u32::from_le_bytes(*signature),
    };
    let mut into = vec![0u8; usize::from(u16::from_le_bytes([len[0], len[1]]))];
    let mut rx: Rx = Box::pin(std::io::Cursor::new(stream.to_vec()));
    futures::executor::block_on(async {
        let mut received = 0;
        while recv_segment(&mut rx, tag, &mut into).await.is_ok() {
            received += 1;
            let (a, b) = tokio::io::duplex(HEADER + into.len());
            let (mut tx, mut back): (Tx, Rx) = (Box::pin(a), Box::pin(b));
            send_segment(&mut tx, tag, &into)
                .await
                .expect("a segment fits its link's buffer");
            let mut echoed = vec![0u8; into.len()];
            assert!(
                recv_segment(&mut back, tag, &mut echoed).await.is_ok(),
                "a segment sent back is refused"
            );
            assert_eq!(echoed, into, "a segment sent back changed");
        }
        received
    })
}

/// The most bytes of buffers the GPU actor of [`gpu_actor_calls`] may hold (it runs on the
/// CPU, as on a worker without GPUs, with a `gpu_memory` share of this size).
pub const GPU_ACTOR_MEMORY: u64 = 1 << 20;

/// The method names [`gpu_actor_calls`] picks from: every method, and one that is not.
const GPU_METHODS: [&str; 9] = [
    Put::NAME,
    Alloc::NAME,
    Get::NAME,
    Free::NAME,
    Launch::NAME,
    CompileUser::NAME,
    LaunchUser::NAME,
    Info::NAME,
    "no_such_method",
];

/// The built-in GPU actor takes calls (`gpu_actor/actor.rs`): one actor on a CPU device
/// holding at most [`GPU_ACTOR_MEMORY`] bytes takes a sequence of calls, each one byte that
/// picks the method, two bytes of length (little-endian) and that many bytes of archived
/// arguments. Each answer must decode as its method's result, as the caller decodes it
/// (`client/src/gpu_actor.rs`). Returns how many calls were answered.
pub fn gpu_actor_calls(bytes: &[u8]) -> usize {
    let mut actor = GpuActor::new(Device::cpu().with_memory_limit(GPU_ACTOR_MEMORY));
    let mut rest = bytes;
    let mut answered = 0;
    while let Some((&which, tail)) = rest.split_first() {
        let (len, tail) = match tail.split_first_chunk::<2>() {
            Some((len, tail)) => (usize::from(u16::from_le_bytes(*len)), tail),
            None => (tail.len(), tail),
        };
        let (args, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        let method = GPU_METHODS[usize::from(which) % GPU_METHODS.len()];
        let Ok(reply) = actor.call(method, args) else {
            continue;
        };
        answered += 1;
        match method {
            Put::NAME => answer_decodes::<Put>(&reply),
            Alloc::NAME => answer_decodes::<Alloc>(&reply),
            Get::NAME => answer_decodes::<Get>(&reply),
            Free::NAME => answer_decodes::<Free>(&reply),
            Launch::NAME => answer_decodes::<Launch>(&reply),
            CompileUser::NAME => answer_decodes::<CompileUser>(&reply),
            LaunchUser::NAME => answer_decodes::<LaunchUser>(&reply),
            Info::NAME => answer_decodes::<Info>(&reply),
            other => panic!("the GPU actor answered the unknown method {other:?}"),
        }
    }
    answered
}

fn answer_decodes<M: GpuMethod>(reply: &[u8])
where
    Result<M::Output, GpuActorError>: Wire,
{
    assert!(
        round_trip::<Result<M::Output, GpuActorError>>(reply).is_some(),
        "the GPU actor's answer to {} does not decode as its result",
        M::NAME
    );
}

/// Seed inputs for the fuzz targets, by target name: real messages of every kind, as the
/// processes send them. A valid archive is hard to reach from random bytes (an `rkyv`
/// archive's root is at its end and its pointers are relative), so each target starts from
/// these: it writes its own as it starts (`tests/fuzz/src/lib.rs`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use ember_core::ids::{ActorId, JobId, LeaseId, NodeId};
    use ember_core::proto::{
        ActorCall, ActorLifeStatus, ActorLocation, ActorSpec, CheckpointPolicy, CheckpointSave,
        ClientReply, ClientRequest, ClusterStatus, CustomUsage, EpochCommand, ErrorKind, GpuUsage,
        GroupMember, GroupView, Hello, HelloRole, JobEvent, JobSpec, LeaseSpec, LeasedTask,
        LocalCall, LocalReply, LocalTask, NodeAffinity, NodeStatus, NodeUsage, PeerHello,
        Placement, Rejoin, RemoteError, RestartPolicy, RunningActor, RunningLease, Strategy,
        TaskLease, WaitReason, Welcome, WorkStatus, WorkerCommand, WorkerEvent, WorkerHello,
        WorkerReply, WorkerTerms,
    };
    use ember_core::resources::{
        Allocation, GpuDevice, GpuGrant, GpuShare, GpuStat, NodeResources, ResourceDemand,
    };
    use ember_core::security::Fingerprint;

    use crate::gpu_actor::{
        BufferElement, BufferInfo, GpuInfo, HostData, LaunchArg, LaunchShape, UserKernelInfo,
    };

    fn bytes<T: Wire>(value: &T) -> Vec<u8> {
        encode(value).expect("a seed archives").to_vec()
    }
    fn framed<T: Wire>(value: &T) -> Vec<u8> {
        let body = bytes(value);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }
    fn call<M: GpuMethod>(which: u8, args: &M::Args) -> Vec<u8> {
        let args = bytes(args);
        let mut call = vec![which];
        call.extend_from_slice(&(args.len() as u16).to_le_bytes());
        call.extend_from_slice(&args);
        call
    }
    fn answer<M: GpuMethod>(which: u8, answer: &Result<M::Output, GpuActorError>) -> Vec<u8>
    where
        Result<M::Output, GpuActorError>: Wire,
    {
        let mut seed = vec![which];
        seed.extend_from_slice(&bytes(answer));
        seed
    }

    let error = RemoteError::new(ErrorKind::User, "it failed");
    let fingerprint = Fingerprint([7; 32]);
    let allocation = Allocation {
        cpu_millis: 1500,
        gpus: vec![GpuGrant {
            index: 1,
            share: GpuShare::from_units(25),
            memory: 1 << 30,
        }],
        custom: vec![("disk".into(), 2000)],
    };
    let placement = Placement {
        demand: ResourceDemand {
            cpu_millis: 500,
            gpus: GpuShare::from_units(50),
            gpu_memory: 1 << 30,
            accelerator: Some("H100".into()),
            custom: vec![("disk".into(), 1000)],
        },
        strategy: Strategy::Spread,
        affinity: Some(NodeAffinity {
            node: NodeId(3),
            soft: true,
        }),
        priority: -2,
        pending_timeout_ms: Some(30_000),
        bundle: Some(ember_core::proto::BundleRef {
            gang: ember_core::ids::GangId(6),
            index: 1,
        }),
    };
    let actor_endpoints = ActorEndpoints {
        peer_addr: "10.0.0.2:4000".into(),
        peer_fingerprint: fingerprint,
        host: "host-a".into(),
        local_socket: "/tmp/ember/a.sock".into(),
        mesh_socket: "/tmp/ember/a.mesh".into(),
    };
    let lease_endpoints = LeaseEndpoints {
        peer_addr: "10.0.0.2:4001".into(),
        peer_fingerprint: fingerprint,
        host: "host-a".into(),
        local_socket: "/tmp/ember/l.sock".into(),
    };
    let restart = RestartPolicy {
        max_restarts: 3,
        max_task_retries: -1,
    };
    let checkpoint = CheckpointPolicy {
        enabled: true,
        every_calls: 10,
        every_ms: 5000,
    };
    let location = ActorLocation {
        actor: ActorId(9),
        incarnation: 2,
        node: NodeId(4),
        endpoints: actor_endpoints.clone(),
        allocation: allocation.clone(),
        restart,
    };
    let peer = PeerHello {
        group: "g".into(),
        generation: 3,
        from: 0,
        to: 1,
    };
    let mut hellos = vec![
        Hello::new(
            HELLO_TOKEN,
            HelloRole::Worker(Box::new(WorkerHello {
                name: "worker-1".into(),
                resources: NodeResources {
                    cpu_millis: 8000,
                    gpus: vec![GpuDevice {
                        index: 0,
                        uuid: "GPU-1".into(),
                        name: "NVIDIA H100 80GB HBM3".into(),
                        memory: 80 << 30,
                        accelerator: "H100".into(),
                        logical: false,
                    }],
                    custom: vec![("disk".into(), 1000)],
                    labels: vec!["task:f".into(), "actor:A".into()],
                },
                task_types: vec!["f".into()],
                actor_types: vec!["A".into()],
                address: "10.0.0.2:0".into(),
                rejoin: None,
                launch: Some(ember_core::proto::LaunchTicket {
                    launch: 3,
                    node_type: "h100x8".into(),
                }),
            })),
        ),
        Hello::client(HELLO_TOKEN),
        Hello::new(HELLO_TOKEN, HelloRole::Peer(peer)),
        // Refused ones: a wrong token, another version.
        Hello::client("not the token"),
    ];
    let mut future = Hello::client(HELLO_TOKEN);
    future.version += 1;
    hellos.push(future);
    let image = CheckpointImage {
        seq: 4,
        state: vec![1, 2, 3, 4],
        replies: vec![
            (1, 1, Ok(vec![5])),
            (1, 2, Err(error.clone())),
            (2, 1, Ok(vec![])),
        ],
    };
    let actor_call = ActorCall {
        actor: ActorId(9),
        caller: 77,
        seq: 3,
        method: "incr".into(),
        args: vec![1, 0, 0, 0],
    };
    let leased_task = LeasedTask {
        lease: LeaseId(5),
        name: "f".into(),
        args: vec![2, 0, 0, 0],
    };
    let group = GroupView {
        name: "g".into(),
        generation: 3,
        members: vec![GroupMember {
            actor: ActorId(9),
            incarnation: 2,
            endpoints: actor_endpoints.clone(),
        }],
    };

    let actor_status = WorkStatus {
        id: "actor-9".into(),
        kind: "actor".into(),
        name: "A".into(),
        demand: "cpu=0.5 gpu=0.5".into(),
        node: Some("node-4".into()),
        gpus: allocation.gpus.clone(),
        priority: 0,
        actor: Some(ActorLifeStatus {
            state: "alive".into(),
            incarnation: 2,
            restarts: 1,
            checkpoint_seq: Some(4),
            checkpoint_age_ms: Some(1200),
            reason: None,
            holders: 2,
        }),
        waiting: None,
        fails_in_ms: None,
    };
    let status = ClusterStatus {
        nodes: vec![NodeStatus {
            id: "node-4".into(),
            name: "worker-1".into(),
            address: "10.0.0.2:0".into(),
            usage: NodeUsage {
                node: NodeId(4),
                schedulable: true,
                cpu_millis_total: 8000,
                cpu_millis_free: 6500,
                gpus: vec![GpuUsage {
                    index: 1,
                    accelerator: "H100".into(),
                    share_used: GpuShare::from_units(25),
                    share_free: GpuShare::from_units(75),
                    memory_total: 80 << 30,
                    memory_reserved: 1 << 30,
                }],
                custom: vec![CustomUsage {
                    name: "disk".into(),
                    total_millis: 4000,
                    free_millis: 2000,
                }],
                leases: 1,
                labels: vec!["task:f".into()],
            },
            gpu_stats: vec![GpuStat {
                index: 1,
                memory_free: 70 << 30,
                utilization: 40,
            }],
            heartbeat_age_ms: 80,
            types: 2,
        }],
        actors: vec![actor_status.clone()],
        leases: vec![],
        jobs: vec![],
        queue: vec![WorkStatus {
            node: None,
            gpus: vec![],
            actor: None,
            waiting: Some("infeasible: no GPU has accelerator type A100".into()),
            fails_in_ms: Some(60_000),
            ..actor_status
        }],
        gangs: vec![ember_core::proto::GangStatus {
            id: "gang-6".into(),
            strategy: "strict_spread".into(),
            state: "replacing".into(),
            waiting: Some("waiting for capacity: bundle 1 (gpus=1) fits on no node now".into()),
            fails_in_ms: None,
            bundles: vec![ember_core::proto::BundleStatus {
                demand: "gpus=1".into(),
                node: Some("node-4".into()),
                leases: 1,
                waiting: 0,
            }],
        }],
        autoscaler: Some(ember_core::proto::AutoscalerStatus {
            types: vec![ember_core::proto::NodeTypeStatus {
                name: "h100x8".into(),
                resources: "cpus=64, gpus=8 (H100 80GiB)".into(),
                min: 0,
                max: 4,
                warm: 1,
                price_micros_per_hour: 24_000_000,
                spot: true,
                nodes: 1,
                launching: 1,
                failing: Some(
                    "1 failure(s) in a row, the latest: quota; next try in 900 ms".into(),
                ),
            }],
            launching: vec![ember_core::proto::LaunchStatus {
                launch: 3,
                node_type: "h100x8".into(),
                state: "launching".into(),
                instance: Some("i-0abc".into()),
                reason: "waiting work needs [gpus=1]".into(),
                age_ms: 1200,
            }],
            nodes: vec![ember_core::proto::AutoscaledNodeStatus {
                node: NodeId(4),
                node_type: "h100x8".into(),
                instance: Some("slurm-12".into()),
                state: "idle".into(),
                idle_ms: Some(5_000),
            }],
            stopped: vec![ember_core::proto::StoppedStatus {
                node: Some(NodeId(2)),
                launch: 1,
                instance: Some("i-0def".into()),
                why: "let go: idle for 60 s".into(),
                age_ms: 9_000,
            }],
            decisions: vec![ember_core::proto::DecisionStatus {
                age_ms: 1300,
                decision: "launch h100x8 (launch 3): waiting work needs [gpus=1]".into(),
            }],
        }),
    };
    let mut seeds: Vec<(&'static str, Vec<u8>)> = Vec::new();
    // A worker re-joining after a head restart, with what it still runs.
    let mut rejoining = hellos[0].clone();
    if let HelloRole::Worker(worker) = &mut rejoining.role {
        worker.rejoin = Some(Rejoin {
            node: NodeId(4),
            epoch: 2,
            actors: vec![RunningActor {
                actor: ActorId(9),
                incarnation: 2,
                allocation: allocation.clone(),
                endpoints: actor_endpoints.clone(),
                sealed: false,
            }],
            leases: vec![RunningLease {
                lease: LeaseId(5),
                allocation: allocation.clone(),
            }],
        });
    }
    hellos.push(rejoining);
    for hello in &hellos {
        seeds.push(("hello", encode_hello(hello).expect("a seed encodes")));
    }
    for epoch in [1, 7] {
        seeds.push(("worker_terms", bytes(&WorkerTerms { epoch })));
    }
    let welcomes = [
        Welcome::Accepted {
            node: Some(NodeId(1)),
        },
        Welcome::Accepted { node: None },
        Welcome::Refused {
            reason: "wrong cluster token".into(),
        },
    ];
    for welcome in &welcomes {
        seeds.push(("welcome", bytes(welcome)));
    }
    for request in [
        ClientRequest::LeaseTask(LeaseSpec {
            name: "f".into(),
            placement: placement.clone(),
        }),
        ClientRequest::CreateActor(ActorSpec {
            type_name: "A".into(),
            args: vec![1, 2],
            placement: placement.clone(),
            restart,
            checkpoint,
        }),
        ClientRequest::KillActor { actor: ActorId(9) },
        ClientRequest::HoldActor { actor: ActorId(9) },
        ClientRequest::ReleaseActor { actor: ActorId(9) },
        ClientRequest::SubmitJob(JobSpec {
            command: vec!["echo".into(), "hi".into()],
            env: vec![("A".into(), "1".into())],
            placement: placement.clone(),
        }),
        ClientRequest::Status,
        ClientRequest::LocateActor {
            actor: ActorId(9),
            known: 1,
            suspect: true,
            timeout_ms: 1000,
        },
        ClientRequest::SaveCheckpoint(CheckpointSave {
            actor: ActorId(9),
            incarnation: 2,
            seq: 4,
            image: bytes(&image),
        }),
        ClientRequest::DrainNode {
            node: NodeId(4),
            grace_ms: 100,
            notice: false,
        },
        ClientRequest::FormGroup {
            name: "g".into(),
            members: vec![ActorId(9), ActorId(10)],
        },
        ClientRequest::JoinGroup {
            name: "g".into(),
            actor: ActorId(9),
            world: 2,
            timeout_ms: 1000,
        },
        ClientRequest::GetGroup {
            name: "g".into(),
            timeout_ms: 1000,
        },
        ClientRequest::GroupHealth {
            name: "g".into(),
            generation: 3,
            incarnations: vec![2, 1],
        },
        ClientRequest::GroupFailed {
            name: "g".into(),
            generation: 3,
            reason: "link broke".into(),
            suspect: Some(1),
        },
        ClientRequest::WaitForNodes {
            count: 2,
            timeout_ms: 1000,
        },
        ClientRequest::CreateGang(ember_core::proto::GangSpec {
            bundles: vec![placement.demand.clone(), ResourceDemand::default()],
            strategy: ember_core::proto::GangStrategy::StrictSpread,
            priority: 1,
            pending_timeout_ms: Some(500),
        }),
        ClientRequest::RemoveGang {
            gang: ember_core::ids::GangId(6),
        },
        ClientRequest::Usage {
            since_ms_ago: Some(3_600_000),
        },
        ClientRequest::Usage { since_ms_ago: None },
    ] {
        seeds.push(("client_request", bytes(&request)));
    }
    for reply in [
        ClientReply::TaskLeased(TaskLease {
            lease: LeaseId(5),
            node: NodeId(4),
            allocation: allocation.clone(),
            endpoints: lease_endpoints.clone(),
        }),
        ClientReply::ActorCreated(location.clone()),
        ClientReply::ActorKilled,
        ClientReply::ActorHeld,
        ClientReply::ActorReleased,
        ClientReply::ActorLocated(location.clone()),
        ClientReply::CheckpointSaved { seq: 4 },
        ClientReply::Drained { moved: 2 },
        ClientReply::Job(JobEvent::Started {
            job: JobId(6),
            node: NodeId(4),
            allocation: allocation.clone(),
        }),
        ClientReply::Job(JobEvent::Waiting(WaitReason {
            infeasible: false,
            reason: "no live node has gpus=1 free now".into(),
            fails_in_ms: None,
        })),
        ClientReply::Job(JobEvent::Waiting(WaitReason {
            infeasible: true,
            reason: "no GPU has accelerator type A100 (the cluster has: H100)".into(),
            fails_in_ms: Some(60_000),
        })),
        ClientReply::Job(JobEvent::Stdout(b"out\n".to_vec())),
        ClientReply::Job(JobEvent::Stderr(b"err\n".to_vec())),
        ClientReply::Job(JobEvent::Exited(137)),
        ClientReply::Status(Box::new(status.clone())),
        ClientReply::Group(group.clone()),
        ClientReply::GroupHealth {
            broken: Some("rank 1 died".into()),
        },
        ClientReply::NodesReady { count: 2 },
        ClientReply::GangCreated {
            gang: ember_core::ids::GangId(6),
            nodes: vec![NodeId(4), NodeId(5)],
        },
        ClientReply::GangRemoved,
        ClientReply::Usage(Box::new(usage_report())),
        ClientReply::Error(error.clone()),
    ] {
        seeds.push(("client_reply", bytes(&reply)));
    }
    for command in [
        WorkerCommand::OpenLease {
            lease: LeaseId(5),
            allocation: allocation.clone(),
        },
        WorkerCommand::CloseLease { lease: LeaseId(5) },
        WorkerCommand::CreateActor {
            actor: ActorId(9),
            type_name: "A".into(),
            args: vec![1, 2],
            allocation: allocation.clone(),
            incarnation: 2,
            checkpoint,
            restore: Some(bytes(&image)),
        },
        WorkerCommand::KillActor {
            actor: ActorId(9),
            incarnation: 2,
        },
        WorkerCommand::Probe {
            actor: ActorId(9),
            incarnation: 2,
        },
        WorkerCommand::SealActor { actor: ActorId(9) },
        WorkerCommand::RunJob {
            job: JobId(6),
            command: vec!["echo".into(), "hi".into()],
            env: vec![("A".into(), "1".into())],
            allocation: allocation.clone(),
        },
    ] {
        seeds.push(("worker_command", bytes(&EpochCommand { epoch: 3, command })));
    }
    for reply in [
        WorkerReply::LeaseOpened(lease_endpoints.clone()),
        WorkerReply::LeaseClosed,
        WorkerReply::ActorReady(actor_endpoints.clone()),
        WorkerReply::ActorKilled,
        WorkerReply::Probed { alive: true },
        WorkerReply::Sealed { seq: Some(4) },
        WorkerReply::Job(JobEvent::Exited(0)),
        WorkerReply::Error(error.clone()),
    ] {
        seeds.push(("worker_reply", bytes(&reply)));
    }
    for event in [
        WorkerEvent::Heartbeat {
            gpus: vec![GpuStat {
                index: 0,
                memory_free: 1 << 30,
                utilization: 40,
            }],
        },
        WorkerEvent::ActorExited {
            actor: ActorId(9),
            incarnation: 2,
            reason: "killed by signal 9".into(),
        },
        WorkerEvent::Leaving { grace_ms: 100 },
    ] {
        seeds.push(("worker_event", bytes(&event)));
    }
    seeds.push(("actor_call", bytes(&actor_call)));
    let local_call = LocalCall {
        id: 1,
        call: actor_call,
    };
    seeds.push(("local_call", bytes(&local_call)));
    seeds.push(("leased_task", bytes(&leased_task)));
    let local_task = LocalTask {
        id: 1,
        task: leased_task,
    };
    seeds.push(("local_task", bytes(&local_task)));
    for reply in [Ok(vec![1, 2, 3]), Err(error.clone())] {
        seeds.push(("call_reply", bytes(&reply)));
        seeds.push(("local_reply", bytes(&LocalReply { id: 1, reply })));
    }
    for request in [
        ExecRequest::OpenLease {
            id: 1,
            lease: LeaseId(5),
            node: NodeId(4),
            allocation: allocation.clone(),
            token: "t0ken".into(),
            listen: "0.0.0.0:0".into(),
            socket: "/tmp/ember/l.sock".into(),
        },
        ExecRequest::CloseLease {
            id: 2,
            lease: LeaseId(5),
        },
        ExecRequest::CreateActor {
            id: 3,
            actor: ActorId(9),
            type_name: "A".into(),
            args: vec![1, 2],
            node: NodeId(4),
            allocation: allocation.clone(),
            token: "t0ken".into(),
            listen: "0.0.0.0:0".into(),
            socket: "/tmp/ember/a.sock".into(),
            incarnation: 2,
            checkpoint,
            restore: Some(bytes(&image)),
            head: "10.0.0.1:7000".into(),
            head_fingerprint: fingerprint,
        },
        ExecRequest::Seal { id: 4 },
    ] {
        let command = ExecCommand { epoch: 2, request };
        seeds.push(("exec_request", bytes(&command)));
    }
    for result in [
        Ok(bytes(&lease_endpoints)),
        Ok(bytes(&actor_endpoints)),
        Ok(bytes(&Some(4u64))),
        Ok(bytes(&None::<u64>)),
        Err(error.clone()),
    ] {
        seeds.push(("exec_reply", bytes(&ExecReply { id: 1, result })));
    }
    seeds.push(("checkpoint_image", bytes(&image)));

    // Expect operation 3, signature 0xfeed, 4 bytes; two such segments, then one of another
    // operation.
    let mut link = Vec::new();
    link.extend_from_slice(&3u64.to_le_bytes());
    link.extend_from_slice(&0xfeedu32.to_le_bytes());
    link.extend_from_slice(&4u16.to_le_bytes());
    for op in [3u64, 3, 4] {
        link.extend_from_slice(&op.to_le_bytes());
        link.extend_from_slice(&0xfeedu32.to_le_bytes());
        link.extend_from_slice(&4u32.to_le_bytes());
        link.extend_from_slice(&[1, 2, 3, 4]);
    }
    seeds.push(("link_header", link));

    // The hello limit, pieces from seed 7: the welcomes in a row; then the tiny limit.
    let mut stream = vec![0, 7];
    for welcome in &welcomes {
        stream.extend_from_slice(&framed(welcome));
    }
    seeds.push(("frame", stream));
    let mut tiny = vec![2 + 3 * 8, 1];
    tiny.extend_from_slice(&framed(&welcomes[1]));
    seeds.push(("frame", tiny));

    // Methods by their place in GPU_METHODS: put 0, alloc 1, get 2, free 3, launch 4,
    // compile_user 5, launch_user 6, info 7.
    let mut calls = Vec::new();
    calls.extend(call::<Put>(
        0,
        &("x".into(), HostData::F32(vec![1.0, 2.0, 3.0, 4.0])),
    ));
    calls.extend(call::<Alloc>(1, &("y".into(), BufferElement::F32, 4)));
    let axpy = vec![
        LaunchArg::F32(2.0),
        LaunchArg::buffer("x"),
        LaunchArg::buffer("y"),
    ];
    calls.extend(call::<Launch>(4, &("axpy".into(), axpy)));
    calls.extend(call::<Get>(2, &("y".into(),)));
    calls.extend(call::<Info>(7, &()));
    calls.extend(call::<Free>(3, &("x".into(),)));
    seeds.push(("gpu_actor_call", calls));
    let mut calls = Vec::new();
    calls.extend(call::<Put>(
        0,
        &("a".into(), HostData::F16(vec![0x3c00; 6])),
    ));
    calls.extend(call::<Put>(
        0,
        &("b".into(), HostData::F16(vec![0x4000; 6])),
    ));
    calls.extend(call::<Alloc>(1, &("c".into(), BufferElement::F16, 4)));
    let matmul = vec![
        LaunchArg::buffer("a"),
        LaunchArg::buffer("b"),
        LaunchArg::buffer("c"),
        LaunchArg::U32(2),
        LaunchArg::U32(3),
        LaunchArg::U32(2),
    ];
    calls.extend(call::<Launch>(4, &("matmul_f16".into(), matmul)));
    calls.extend(call::<Put>(
        0,
        &("s".into(), HostData::F32(vec![1.0, 2.0, 3.0, 4.0])),
    ));
    calls.extend(call::<Alloc>(1, &("t".into(), BufferElement::F32, 4)));
    let softmax = vec![
        LaunchArg::buffer("s"),
        LaunchArg::buffer("t"),
        LaunchArg::U32(2),
        LaunchArg::U32(2),
    ];
    calls.extend(call::<Launch>(4, &("softmax".into(), softmax)));
    calls.extend(call::<Put>(
        0,
        &("h".into(), HostData::Bf16(vec![0x3f80; 3])),
    ));
    calls.extend(call::<CompileUser>(
        5,
        &("extern \"C\" __global__ void k() {}".into(), "k".into()),
    ));
    let shape = LaunchShape {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        shared_mem_bytes: 0,
    };
    calls.extend(call::<LaunchUser>(
        6,
        &("k".into(), shape, vec![LaunchArg::buffer("t")]),
    ));
    seeds.push(("gpu_actor_call", calls));

    let info = BufferInfo {
        name: "x".into(),
        element: BufferElement::Bf16,
        len: 4,
        bytes: 8,
    };
    for seed in [
        answer::<Put>(0, &Ok(info.clone())),
        answer::<Alloc>(
            1,
            &Err(GpuActorError::MemoryLimit {
                requested: 1 << 30,
                in_use: 0,
                limit: 1 << 20,
            }),
        ),
        answer::<Get>(2, &Ok(HostData::F32(vec![1.0, 2.0]))),
        answer::<Get>(2, &Ok(HostData::F16(vec![0x3c00]))),
        answer::<Get>(2, &Ok(HostData::Bf16(vec![0x3f80]))),
        answer::<Free>(3, &Err(GpuActorError::UnknownBuffer { name: "x".into() })),
        answer::<Launch>(4, &Ok(())),
        answer::<CompileUser>(
            5,
            &Ok(UserKernelInfo {
                entry: "k".into(),
                from_cache: true,
            }),
        ),
        answer::<LaunchUser>(
            6,
            &Err(GpuActorError::CudaUnavailable {
                reason: "no GPU".into(),
            }),
        ),
        answer::<Info>(
            7,
            &Ok(GpuInfo {
                cuda_ordinal: Some(0),
                device_name: Some("NVIDIA H100 80GB HBM3".into()),
                cpu_fallback_reason: None,
                memory_in_use: 8,
                memory_limit: Some(1 << 20),
                buffers: vec![info.clone()],
                user_kernels: vec!["k".into()],
            }),
        ),
    ] {
        seeds.push(("gpu_actor_reply", seed));
    }
    seeds
}

/// A usage report with one of everything, for the seeds.
fn usage_report() -> ember_core::proto::UsageReport {
    use ember_core::proto::{
        EarlierNodeTime, EarlierUsage, NodeSplit, NodeTime, RecordUsage, UsageAmounts, UsageReport,
        EARLIER,
    };
    let usage = UsageAmounts {
        gpu_share_seconds: 1.5,
        gpu_memory_gib_seconds: 24.0,
        cpu_seconds: 3.0,
        cost: 0.002,
    };
    let split = NodeSplit {
        life_ns: 10_000,
        allocated_ns: 6_000,
        idle_ns: 3_000,
        warm_ns: 1_000,
        allocated_cost: 0.01,
        idle_cost: 0.005,
        warm_cost: 0.001,
    };
    UsageReport {
        window_ms: 3_600_000,
        head_started_ms_ago: 7_200_000,
        records: vec![RecordUsage {
            kind: "actor".into(),
            id: "actor-3".into(),
            incarnation: Some(2),
            name: "Trainer".into(),
            job: "client-1.4".into(),
            node: "node-2".into(),
            node_type: "h100x8-spot".into(),
            gpu_model: Some("H100".into()),
            spot: true,
            gpus: 0.5,
            gpu_memory_gib: 8.0,
            cpus: 1.0,
            price_share: 0.0625,
            started_ms_ago: 3_000,
            ended_ms_ago: Some(1_000),
            usage,
        }],
        earlier: vec![EarlierUsage {
            job: EARLIER.into(),
            node_type: "static:cpu".into(),
            node: EARLIER.into(),
            records: 40,
            usage,
        }],
        nodes: vec![NodeTime {
            node: "node-2".into(),
            node_type: "h100x8-spot".into(),
            gpu_model: Some("H100".into()),
            spot: true,
            price_per_hour: 12.5,
            joined_ms_ago: 5_000,
            left_ms_ago: None,
            from_ms_ago: 5_000,
            split,
        }],
        earlier_nodes: vec![EarlierNodeTime {
            node_type: "static:cpu".into(),
            nodes: 3,
            split,
        }],
        partial: vec!["a summary straddles the window".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::proto::Hello;

    #[test]
    fn each_entry_point_reads_what_its_process_sends() {
        let bytes = encode_hello(&Hello::client(HELLO_TOKEN)).unwrap();
        assert!(hello(&bytes));
        let wrong = encode_hello(&Hello::client("wrong")).unwrap();
        assert!(hello(&wrong), "a wrong token decodes, and is refused");
        assert!(!hello(&[0xff; 9]));

        let command = ExecCommand {
            epoch: 3,
            request: ExecRequest::Seal { id: 7 },
        };
        assert!(exec_request(&encode(&command).unwrap()));
        let reply = ExecReply {
            id: 7,
            result: Ok(encode(&Some(3u64)).unwrap().to_vec()),
        };
        assert!(exec_reply(&encode(&reply).unwrap()));

        let image = CheckpointImage {
            seq: 2,
            state: vec![1, 2, 3],
            replies: vec![
                (1, 1, Ok(vec![9])),
                (1, 1, Ok(vec![8])),
                (
                    2,
                    5,
                    Err(ember_core::proto::RemoteError::new(
                        ember_core::proto::ErrorKind::User,
                        "no",
                    )),
                ),
            ],
        };
        assert!(checkpoint_image(&encode(&image).unwrap()));
        assert!(!checkpoint_image(b"not an image"));

        // Expect operation 3, signature 4, 2 bytes; then two such segments and a third
        // of another operation.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        for op in [3u64, 3, 5] {
            bytes.extend_from_slice(&op.to_le_bytes());
            bytes.extend_from_slice(&4u32.to_le_bytes());
            bytes.extend_from_slice(&2u32.to_le_bytes());
            bytes.extend_from_slice(&[0xAA, 0xBB]);
        }
        assert_eq!(bytes.len(), 14 + 3 * (HEADER + 2));
        assert_eq!(link_segments(&bytes), 2);

        let mut calls = Vec::new();
        let alloc = encode(&(
            String::from("x"),
            crate::gpu_actor::BufferElement::F32,
            4u64,
        ))
        .unwrap();
        calls.push(1u8);
        calls.extend_from_slice(&(alloc.len() as u16).to_le_bytes());
        calls.extend_from_slice(&alloc);
        let info = encode(&()).unwrap();
        calls.push(7u8);
        calls.extend_from_slice(&(info.len() as u16).to_le_bytes());
        calls.extend_from_slice(&info);
        calls.push(8u8);
        calls.extend_from_slice(&0u16.to_le_bytes());
        assert_eq!(
            gpu_actor_calls(&calls),
            2,
            "alloc and info answered, the unknown not"
        );
    }

    fn answer_reads<M: GpuMethod>(bytes: &[u8]) -> bool
    where
        Result<M::Output, GpuActorError>: Wire,
    {
        round_trip::<Result<M::Output, GpuActorError>>(bytes).is_some()
    }

    #[test]
    fn every_seed_is_read_by_its_target() {
        use ember_core::proto::*;

        for (target, seed) in seeds() {
            let read = match target {
                // The seed of another version decodes to that error alone.
                "hello" => {
                    hello(&seed) || matches!(decode_hello(&seed), Err(FrameError::Version { .. }))
                }
                "welcome" => round_trip::<Welcome>(&seed).is_some(),
                "client_request" => round_trip::<ClientRequest>(&seed).is_some(),
                "client_reply" => round_trip::<ClientReply>(&seed).is_some(),
                "worker_command" => round_trip::<EpochCommand>(&seed).is_some(),
                "worker_terms" => round_trip::<WorkerTerms>(&seed).is_some(),
                "worker_reply" => round_trip::<WorkerReply>(&seed).is_some(),
                "worker_event" => round_trip::<WorkerEvent>(&seed).is_some(),
                "actor_call" => round_trip::<ActorCall>(&seed).is_some(),
                "local_call" => round_trip::<LocalCall>(&seed).is_some(),
                "leased_task" => round_trip::<LeasedTask>(&seed).is_some(),
                "local_task" => round_trip::<LocalTask>(&seed).is_some(),
                "call_reply" => round_trip::<CallReply>(&seed).is_some(),
                "local_reply" => round_trip::<LocalReply>(&seed).is_some(),
                "exec_request" => exec_request(&seed),
                "exec_reply" => exec_reply(&seed),
                "checkpoint_image" => checkpoint_image(&seed),
                "link_header" => link_segments(&seed) == 2,
                "frame" => {
                    let mut stream = &seed[2..];
                    let read = futures::executor::block_on(read_frame::<_, Welcome>(
                        &mut stream,
                        HELLO_LIMIT,
                    ));
                    matches!(read, Ok(Some(_)))
                }
                "gpu_actor_call" => gpu_actor_calls(&seed) >= 5,
                "gpu_actor_reply" => match seed[0] {
                    0 => answer_reads::<Put>(&seed[1..]),
                    1 => answer_reads::<Alloc>(&seed[1..]),
                    2 => answer_reads::<Get>(&seed[1..]),
                    3 => answer_reads::<Free>(&seed[1..]),
                    4 => answer_reads::<Launch>(&seed[1..]),
                    5 => answer_reads::<CompileUser>(&seed[1..]),
                    6 => answer_reads::<LaunchUser>(&seed[1..]),
                    _ => answer_reads::<Info>(&seed[1..]),
                },
                other => panic!("a seed for no target: {other}"),
            };
            assert!(read, "a seed of {target} is not read: {seed:?}");
        }
    }
}
