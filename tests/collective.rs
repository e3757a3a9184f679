//! Collective groups across real processes: every operation and element type gives every rank
//! the same bits (with random delays injected before every message), again on a rerun and over
//! either transport; results match a sequential reference; a member killed mid-operation gives
//! every survivor an error within the bound; the group re-forms and the retry succeeds.

use std::time::{Duration, Instant};

use ember::collective::ReduceOp;
use ember::Cluster;
use ember_tests::ranks::{inputs, reduce_op, Member, MemberHandle, Sample};
use ember_tests::{within, within_for, worker_of, TestCluster, WorkerSpec};
use half::{bf16, f16};

const DTYPES: [&str; 6] = ["f16", "bf16", "f32", "f64", "i32", "i64"];
const OPS: [&str; 5] = ["sum", "mean", "min", "max", "product"];
/// One buffer small enough for recursive doubling, one large enough for the ring.
const LENS: [usize; 2] = [1000, 70_001];

/// A worker with one logical GPU per member, so each member gets a worker of its own, and a
/// random pause of up to 300 µs before every message.
fn worker() -> WorkerSpec {
    WorkerSpec::gpus(1, "H100", "80GiB").with_env("EMBER_COLLECTIVE_JITTER_US", "300")
}

async fn cluster_of(n: usize, spec: WorkerSpec) -> (TestCluster, Cluster) {
    TestCluster::with_workers(&vec![spec; n]).await
}

async fn members(cluster: &Cluster, n: usize) -> Vec<MemberHandle> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            within("spawn a member", cluster.spawn(Member::remote()))
                .await
                .expect("a member"),
        );
    }
    out
}

async fn form(cluster: &Cluster, name: &str, members: &[&MemberHandle]) -> u64 {
    let refs: Vec<&ember::ActorRef> = members.iter().map(|m| m.actor()).collect();
    within("form", cluster.form_group(name, &refs))
        .await
        .expect("the group forms")
}

/// Every member's allreduce result (or error), in rank order.
async fn try_allreduce_all(
    ms: &[MemberHandle],
    name: &str,
    dtype: &str,
    op: &str,
    len: usize,
) -> Vec<Result<Vec<u8>, ember::Error>> {
    let calls = ms
        .iter()
        .map(|m| m.allreduce(name.into(), dtype.into(), op.into(), len as u64));
    within("allreduce", futures::future::join_all(calls)).await
}

/// Forms `name` from `ms` and runs an f32 sum, again with a new generation while any rank
/// fails (a generation formed before the head learned of a death breaks at once); returns
/// the generation that succeeded and its results.
async fn reform_until_it_works(
    cluster: &Cluster,
    ms: &[MemberHandle],
    name: &str,
    len: usize,
) -> (u64, Vec<Vec<u8>>) {
    let refs: Vec<&MemberHandle> = ms.iter().collect();
    for _ in 0..10 {
        let generation = form(cluster, name, &refs).await;
        let results = try_allreduce_all(ms, name, "f32", "sum", len).await;
        if results.iter().all(|r| r.is_ok()) {
            return (
                generation,
                results.into_iter().map(Result::unwrap).collect(),
            );
        }
    }
    panic!("group `{name}` never completed an allreduce after forming it 10 times");
}

/// Every member's allreduce result, in rank order.
async fn allreduce_all<'a>(
    ms: impl IntoIterator<Item = &'a MemberHandle>,
    name: &str,
    dtype: &str,
    op: &str,
    len: usize,
) -> Vec<Vec<u8>> {
    let calls = ms
        .into_iter()
        .map(|m| m.allreduce(name.into(), dtype.into(), op.into(), len as u64));
    within("allreduce", futures::future::join_all(calls))
        .await
        .into_iter()
        .enumerate()
        .map(|(r, out)| out.unwrap_or_else(|e| panic!("rank {r}: {e}")))
        .collect()
}

/// Checks `got` (the bytes of a result) against the sequential reference of `n` ranks,
/// within the rounding a different order of `n` additions may cause.
fn check_reference<T: Sample>(got: &[u8], n: usize, op: ReduceOp, what: &str) {
    let got: &[T] = bytemuck::cast_slice(got);
    let per_rank: Vec<Vec<T>> = (0..n).map(|r| inputs::<T>(r, got.len(), op)).collect();
    for (i, &g) in got.iter().enumerate() {
        let xs: Vec<T> = per_rank.iter().map(|v| v[i]).collect();
        let exact = |f: fn(T, T) -> T| xs[1..].iter().fold(xs[0], |a, &b| f(a, b));
        let (want, slack) = match op {
            ReduceOp::Min => (exact(T::min).to_f64(), 0.0),
            ReduceOp::Max => (exact(T::max).to_f64(), 0.0),
            ReduceOp::Sum | ReduceOp::Mean if T::EPSILON == 0.0 => {
                let sum = exact(T::add);
                let v = if op == ReduceOp::Mean {
                    sum.divide(n)
                } else {
                    sum
                };
                (v.to_f64(), 0.0)
            }
            ReduceOp::Product if T::EPSILON == 0.0 => (exact(T::mul).to_f64(), 0.0),
            ReduceOp::Sum | ReduceOp::Mean => {
                let sum: f64 = xs.iter().map(|x| x.to_f64()).sum();
                let mag: f64 = xs.iter().map(|x| x.to_f64().abs()).sum();
                let div = if op == ReduceOp::Mean { n as f64 } else { 1.0 };
                (sum / div, (n as f64 + 1.0) * T::EPSILON * mag / div)
            }
            ReduceOp::Product => {
                let p: f64 = xs.iter().map(|x| x.to_f64()).product();
                (p, (n as f64 + 1.0) * T::EPSILON * p.abs())
            }
        };
        let g = g.to_f64();
        assert!(
            (g - want).abs() <= slack,
            "{what}: element {i} is {g}, the sequential reference {want} (± {slack})"
        );
    }
}

fn check_reference_dyn(dtype: &str, got: &[u8], n: usize, op: ReduceOp, what: &str) {
    match dtype {
        "f16" => check_reference::<f16>(got, n, op, what),
        "bf16" => check_reference::<bf16>(got, n, op, what),
        "f32" => check_reference::<f32>(got, n, op, what),
        "f64" => check_reference::<f64>(got, n, op, what),
        "i32" => check_reference::<i32>(got, n, op, what),
        "i64" => check_reference::<i64>(got, n, op, what),
        other => panic!("no dtype {other}"),
    }
}

#[test]
fn the_inputs_make_the_order_of_addition_matter() {
    // Summed in rank order and in reverse, the inputs of four ranks differ in many elements:
    // so equal bits across ranks are not an accident of exact sums.
    for len in LENS {
        let xs: Vec<Vec<f32>> = (0..4).map(|r| inputs(r, len, ReduceOp::Sum)).collect();
        let differ = (0..len)
            .filter(|&i| {
                let forward = ((xs[0][i] + xs[1][i]) + xs[2][i]) + xs[3][i];
                let backward = ((xs[3][i] + xs[2][i]) + xs[1][i]) + xs[0][i];
                forward.to_bits() != backward.to_bits()
            })
            .count();
        assert!(
            differ > len / 10,
            "only {differ} of {len} elements depend on the order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_and_dtype_gives_every_rank_the_same_bits_and_a_rerun_the_same_again() {
    let (_tc, cluster) = cluster_of(4, worker()).await;
    let ms = members(&cluster, 4).await;
    let refs: Vec<&MemberHandle> = ms.iter().collect();
    form(&cluster, "all", &refs).await;
    for dtype in DTYPES {
        for op in OPS {
            for len in LENS {
                let what = format!("{op} of {len} {dtype}");
                let first = allreduce_all(&ms, "all", dtype, op, len).await;
                for (r, out) in first.iter().enumerate() {
                    assert_eq!(out, &first[0], "{what}: rank {r} differs from rank 0");
                }
                check_reference_dyn(dtype, &first[0], 4, reduce_op(op).unwrap(), &what);
                let again = allreduce_all(&ms, "all", dtype, op, len).await;
                assert_eq!(again, first, "{what}: a rerun changed the bits");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ranks_broadcast_gather_scatter_and_meet_at_barriers() {
    let (_tc, cluster) = cluster_of(3, worker()).await;
    let ms = members(&cluster, 3).await;
    let refs: Vec<&MemberHandle> = ms.iter().collect();
    form(&cluster, "three", &refs).await;
    let n = 3;

    // A group of three is not a power of two: one rank folds in and out.
    for len in LENS {
        let out = allreduce_all(&ms, "three", "f64", "sum", len).await;
        assert!(out.iter().all(|o| o == &out[0]));
        check_reference_dyn("f64", &out[0], n, ReduceOp::Sum, "three ranks");
    }

    // A buffer on each actor's device (the CPU backend here), reduced on the device, gives
    // the host path's bits: through shared memory (large) and recursive doubling (small).
    for (dtype, op, len) in [
        ("f32", "sum", 70_001),
        ("f16", "mean", 1_001),
        ("bf16", "max", 70_001),
    ] {
        let calls = ms
            .iter()
            .map(|m| m.allreduce_on_device("three".into(), dtype.into(), op.into(), len));
        let on_device = within("allreduce on device", futures::future::join_all(calls)).await;
        let on_host = allreduce_all(&ms, "three", dtype, op, len as usize).await;
        for (r, got) in on_device.into_iter().enumerate() {
            assert_eq!(
                got.expect("device allreduce"),
                on_host[0],
                "{op} of {dtype}: rank {r}"
            );
        }
    }

    for (root, len) in [(0usize, 10usize), (2, 300_000)] {
        let calls = ms
            .iter()
            .map(|m| m.broadcast("three".into(), "f32".into(), root as u64, len as u64));
        let got = within("broadcast", futures::future::join_all(calls)).await;
        let want: Vec<u8> = bytemuck::cast_slice(&inputs::<f32>(root, len, ReduceOp::Sum)).to_vec();
        for (r, g) in got.into_iter().enumerate() {
            assert_eq!(g.expect("broadcast"), want, "rank {r} got the root's bytes");
        }
    }

    for len in [0usize, 7, 100_000] {
        let calls = ms
            .iter()
            .map(|m| m.allgather("three".into(), "i64".into(), len as u64));
        let got = within("allgather", futures::future::join_all(calls)).await;
        let want: Vec<i64> = (0..n)
            .flat_map(|r| inputs::<i64>(r, len, ReduceOp::Sum))
            .collect();
        for g in got {
            assert_eq!(
                g.expect("allgather"),
                bytemuck::cast_slice::<i64, u8>(&want)
            );
        }
    }

    let len = 100_003;
    let calls = ms
        .iter()
        .map(|m| m.reduce_scatter("three".into(), "f32".into(), "sum".into(), len));
    let got = within("reduce_scatter", futures::future::join_all(calls)).await;
    let whole = allreduce_all(&ms, "three", "f32", "sum", len as usize).await;
    let mut covered = 0;
    for (r, g) in got.into_iter().enumerate() {
        let (start, end, bytes) = g.expect("reduce_scatter");
        assert_eq!(
            start,
            covered,
            "rank {r}'s share follows rank {}'s",
            r.max(1) - 1
        );
        covered = end;
        // The same plan sums the same way: the share equals that slice of the allreduce.
        assert_eq!(bytes, whole[0][start as usize * 4..end as usize * 4]);
    }
    assert_eq!(covered, len);

    for _ in 0..3 {
        let calls = ms.iter().map(|m| m.barrier("three".into()));
        for r in within("barrier", futures::future::join_all(calls)).await {
            r.expect("barrier");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_between_ranks_gives_the_same_bits_as_the_local_path() {
    let quic = WorkerSpec::gpus(1, "H100", "80GiB").with_env("EMBER_COLLECTIVE_TRANSPORT", "quic");
    let (_tc, cluster) = cluster_of(3, quic).await;
    let ms = members(&cluster, 3).await;
    let refs: Vec<&MemberHandle> = ms.iter().collect();
    form(&cluster, "quic", &refs).await;
    for len in LENS {
        let out = allreduce_all(&ms, "quic", "f32", "sum", len).await;
        assert!(out.iter().all(|o| o == &out[0]));
        check_reference_dyn("f32", &out[0], 3, ReduceOp::Sum, "over QUIC");
    }
    // The bits depend on the plan only, not on the transport.
    let (_tc2, local) = cluster_of(3, worker()).await;
    let lm = members(&local, 3).await;
    let lrefs: Vec<&MemberHandle> = lm.iter().collect();
    form(&local, "local", &lrefs).await;
    let a = allreduce_all(&ms, "quic", "bf16", "mean", 70_001).await;
    let b = allreduce_all(&lm, "local", "bf16", "mean", 70_001).await;
    assert_eq!(a[0], b[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_by_name_ranks_by_creation_order_and_groups_grow_and_shrink_between_steps() {
    let (_tc, cluster) = cluster_of(3, worker()).await;
    let ms = members(&cluster, 3).await;
    // Joins arrive in reverse order of creation; ranks still follow creation.
    let joins = ms.iter().rev().map(|m| m.join("joined".into(), 3, 30_000));
    let got: Vec<(u64, u64)> = within("join", futures::future::join_all(joins))
        .await
        .into_iter()
        .map(|r| r.expect("join"))
        .collect();
    assert_eq!(got, vec![(2, 1), (1, 1), (0, 1)]);
    let out = allreduce_all(&ms, "joined", "i32", "sum", 10).await;
    assert!(out.iter().all(|o| o == &out[0]));

    // Joiners that disagree on the size are refused; too few joiners time out.
    let (a, b) = within("bad joins", async {
        futures::join!(ms[0].join("odd".into(), 2, 2_000), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ms[1].join("odd".into(), 3, 2_000).await
        })
    })
    .await;
    let refused = b.unwrap_err().to_string();
    assert!(refused.contains("world size 2, not 3"), "{refused}");
    let lonely = a.unwrap_err().to_string();
    assert!(lonely.contains("too few joined"), "{lonely}");

    // Between steps, the group grows and shrinks: its members join again with another world
    // size, and each step reduces over exactly the members of its generation (through shared
    // memory: the buffers are large).
    let len = 100_000;
    for (generation, who) in (1u64..).zip([vec![0usize, 1], vec![0, 1, 2], vec![0, 2]]) {
        let world = who.len() as u32;
        let joins = who
            .iter()
            .map(|&i| ms[i].join("elastic".into(), world, 30_000));
        let got: Vec<(u64, u64)> = within("elastic join", futures::future::join_all(joins))
            .await
            .into_iter()
            .map(|r| r.expect("join"))
            .collect();
        let expected: Vec<(u64, u64)> = (0..who.len() as u64).map(|r| (r, generation)).collect();
        assert_eq!(got, expected, "members {who:?}");
        let out = allreduce_all(who.iter().map(|&i| &ms[i]), "elastic", "f32", "sum", len).await;
        assert!(out.iter().all(|o| o == &out[0]), "members {who:?}");
        check_reference::<f32>(&out[0], who.len(), ReduceOp::Sum, "elastic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_clear_errors_and_break_only_their_generation() {
    let (_tc, cluster) = cluster_of(2, worker()).await;
    let ms = members(&cluster, 2).await;

    let err = within("unknown", ms[0].lookup("nobody".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no group named `nobody`"), "{err}");

    form(&cluster, "solo", &[&ms[0]]).await;
    let err = within("not a member", ms[1].lookup("solo".into()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    // A group of one reduces to itself.
    let solo = within(
        "solo",
        ms[0].allreduce("solo".into(), "f32".into(), "sum".into(), 5),
    )
    .await
    .expect("a group of one");
    assert_eq!(
        solo,
        bytemuck::cast_slice::<f32, u8>(&inputs::<f32>(0, 5, ReduceOp::Sum))
    );

    let refs: Vec<&MemberHandle> = ms.iter().collect();
    let refs_dup = [refs[0], refs[0]];
    let dup = within(
        "duplicate",
        cluster.form_group("dup", &refs_dup.map(|m| m.actor())),
    )
    .await
    .unwrap_err();
    assert!(dup.to_string().contains("listed twice"), "{dup}");

    // Ranks that pass different lengths are told so, both of them, and the generation is
    // spent; formed again, the group works.
    form(&cluster, "pair", &refs).await;
    let (a, b) = within("mismatched", async {
        futures::join!(
            ms[0].allreduce("pair".into(), "f32".into(), "sum".into(), 100),
            ms[1].allreduce("pair".into(), "f32".into(), "sum".into(), 101),
        )
    })
    .await;
    for e in [a.unwrap_err(), b.unwrap_err()] {
        assert!(e.to_string().contains("generation 1"), "{e}");
    }
    let again = within(
        "spent",
        ms[0].allreduce("pair".into(), "f32".into(), "sum".into(), 100),
    )
    .await
    .unwrap_err();
    assert!(
        again.to_string().contains("an earlier operation failed"),
        "{again}"
    );
    assert_eq!(form(&cluster, "pair", &refs).await, 2);
    let out = allreduce_all(&ms, "pair", "f32", "sum", 100).await;
    assert_eq!(out[0], out[1]);

    // The same through shared memory (large buffers between ranks on one machine): different
    // lengths, then, once its segments exist, different operations.
    let big = 100_000;
    let (a, b) = within("mismatched through shared memory", async {
        futures::join!(
            ms[0].allreduce("pair".into(), "f32".into(), "sum".into(), big),
            ms[1].allreduce("pair".into(), "f32".into(), "sum".into(), big + 1),
        )
    })
    .await;
    for e in [a.unwrap_err(), b.unwrap_err()] {
        assert!(e.to_string().contains("generation 2"), "{e}");
    }
    assert_eq!(form(&cluster, "pair", &refs).await, 3);
    let out = allreduce_all(&ms, "pair", "f32", "sum", big as usize).await;
    assert_eq!(out[0], out[1]);
    let (a, b) = within("different operations", async {
        futures::join!(
            ms[0].allreduce("pair".into(), "f32".into(), "sum".into(), big),
            ms[1].broadcast("pair".into(), "f32".into(), 0, big),
        )
    })
    .await;
    let (a, b) = (a.unwrap_err().to_string(), b.unwrap_err().to_string());
    assert!(a.contains("generation 3") && a.contains("disagrees"), "{a}");
    assert!(b.contains("generation 3"), "{b}");
    assert_eq!(form(&cluster, "pair", &refs).await, 4);
    let out = allreduce_all(&ms, "pair", "f32", "sum", big as usize).await;
    assert_eq!(out[0], out[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_allreduce_fails_every_survivor_in_bounded_time_and_the_group_reforms()
{
    let (mut tc, cluster) = cluster_of(4, worker()).await;
    let ms = members(&cluster, 4).await;
    let refs: Vec<&MemberHandle> = ms.iter().collect();
    form(&cluster, "dp", &refs).await;
    let len = 300_000u64;
    let baseline = allreduce_all(&ms, "dp", "f32", "sum", len as usize).await;
    within("checkpoint", ms[2].actor().checkpoint())
        .await
        .expect("a checkpoint of rank 2");

    // Ranks 0, 1 and 3 enter the allreduce; rank 2 is late, and its worker is killed while
    // the others wait for it.
    let victim_node = ms[2].actor().node();
    let survivors =
        [0usize, 1, 3].map(|r| ms[r].allreduce("dp".into(), "f32".into(), "sum".into(), len));
    let late = ms[2].late_allreduce("dp".into(), 60_000, len);
    let waiting = futures::future::join_all(survivors);
    tokio::pin!(waiting);
    // Let the survivors reach the operation (they block in it until rank 2 arrives).
    let quiet = tokio::time::timeout(Duration::from_millis(1500), &mut waiting).await;
    assert!(quiet.is_err(), "the survivors wait for rank 2");
    let victim = worker_of(&cluster, victim_node).await;
    tc.kill_worker(&victim);
    let killed = Instant::now();
    // Every survivor fails within the bound, with the reason.
    let results = within_for(Duration::from_secs(20), "survivors fail", &mut waiting).await;
    let noticed = killed.elapsed();
    for (r, res) in results.into_iter().enumerate() {
        let err = res.expect_err("a survivor's allreduce fails");
        assert!(
            err.to_string().contains("generation 1"),
            "survivor {r}: {err}"
        );
    }
    eprintln!("every survivor failed {noticed:?} after the kill");
    drop(late);

    // The victim comes back on a new worker from its checkpoint; the group re-forms with
    // the same four actors and the retried step gives the same bits as before.
    tc.add_worker("w-new", &worker());
    let (generation, retried) = reform_until_it_works(&cluster, &ms, "dp", len as usize).await;
    assert!(generation >= 2);
    assert_eq!(
        retried, baseline,
        "the same membership and inputs give the same bits"
    );
    assert!(ms[2].actor().incarnation() >= 2);
    assert!(
        within("done", ms[2].done()).await.unwrap() >= 1,
        "restored from its checkpoint"
    );

    // Survivors alone, then with a newcomer: each a new generation.
    assert_eq!(
        form(&cluster, "dp", &[&ms[0], &ms[1], &ms[3]]).await,
        generation + 1
    );
    let three = allreduce_all(
        &[ms[0].clone(), ms[1].clone(), ms[3].clone()],
        "dp",
        "i64",
        "sum",
        64,
    )
    .await;
    assert!(three.iter().all(|o| o == &three[0]));
}
