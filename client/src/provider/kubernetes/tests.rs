//! The Kubernetes provider at the HTTP seam, against [`FakeApiServer`], and (`#[ignore]`d)
//! against a real cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ember_core::resources::{GpuDevice, NodeResources};
use ember_core::security::{ClusterFile, Fingerprint};
use ember_head::autoscale::NodeType;
use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fake_api::{FakeApiServer, Recorded};
use super::pod::{pod_name, worker_pod, SUFFIX_LEN};
use super::*;

const TOKEN: &str = "5ec2e7-join-token-never-in-a-pod";
const NS: &str = "ember";
const HEAD: &str = "10.96.0.17:7700";

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within 30 s"))
}

fn node_type(name: &str, cpu_millis: u64, gpus: u32, accelerator: &str) -> NodeType {
    NodeType {
        name: name.into(),
        resources: NodeResources {
            cpu_millis,
            gpus: (0..gpus)
                .map(|index| GpuDevice {
                    index,
                    uuid: format!("GPU-{name}-{index}"),
                    name: accelerator.into(),
                    memory: 80 << 30,
                    accelerator: accelerator.into(),
                    logical: true,
                })
                .collect(),
            ..NodeResources::default()
        },
        min: 0,
        max: 4,
        warm: 0,
        price_micros_per_hour: 1_000_000,
        spot: false,
        idle_timeout: Duration::from_secs(60),
    }
}

fn cpu4() -> NodeType {
    node_type("cpu-4", 4_000, 0, "")
}

fn h100x8() -> NodeType {
    node_type("H100_x8", 96_000, 8, "H100")
}

fn cluster(address: &str) -> ClusterFile {
    ClusterFile {
        address: address.parse().expect("an address"),
        token: TOKEN.into(),
        fingerprint: Fingerprint([7; 32]),
    }
}

fn provider(fake: &FakeApiServer, config: KubernetesConfig) -> Arc<KubernetesProvider> {
    Arc::new(KubernetesProvider::with_client(config, fake.client(NS)).expect("a provider"))
}

/// Launches as the head does: on a blocking thread.
async fn launch(
    p: &Arc<KubernetesProvider>,
    t: NodeType,
    launch: u64,
    head: &str,
) -> Result<String, ProviderError> {
    let p = p.clone();
    let cluster = cluster(head);
    let call = tokio::task::spawn_blocking(move || {
        p.launch(&LaunchRequest {
            launch,
            node_type: &t,
            cluster: &cluster,
        })
    });
    within("a launch", call).await.expect("the launch panicked")
}

/// Stops as the head does: on a blocking thread.
async fn stop(p: &Arc<KubernetesProvider>, instance: &str) -> Result<(), ProviderError> {
    let p = p.clone();
    let instance = instance.to_string();
    let call = tokio::task::spawn_blocking(move || p.stop(&instance));
    within("a stop", call).await.expect("the stop panicked")
}

/// The one request the fake received, checked to be `method path`.
fn only_request(fake: &FakeApiServer, method: &str, path: &str) -> Recorded {
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let r = requests.into_iter().next().expect("one");
    assert_eq!((r.method.as_str(), r.path.as_str()), (method, path));
    r
}

fn at<'a>(body: &'a Value, pointer: &str) -> &'a Value {
    body.pointer(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {body:#}"))
}

/// The container's arguments as one line.
fn args_line(pod: &Value) -> String {
    at(pod, "/spec/containers/0/args")
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that the token comes from the Secret and appears nowhere in the request.
fn assert_token_from_secret(r: &Recorded, secret: &str, key: &str) {
    let pod = r.body.as_ref().expect("a JSON body");
    assert_eq!(
        at(pod, "/spec/containers/0/env"),
        &json!([{
            "name": "EMBER_TOKEN",
            "valueFrom": { "secretKeyRef": { "name": secret, "key": key } }
        }])
    );
    assert!(!r.raw.contains(TOKEN), "the token is in the pod: {}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_type_becomes_one_pod_with_its_cpus_and_the_token_from_the_secret() {
    let fake = FakeApiServer::start().await;
    let mut config = KubernetesConfig::new("registry.example.com/ember:0.1.0");
    config.head_address = Some(HEAD.into());
    let p = provider(&fake, config);
    assert_eq!(p.kind(), "kubernetes");

    let instance = launch(&p, cpu4(), 7, "0.0.0.0:7700")
        .await
        .expect("the pod is created");

    assert!(instance.starts_with("ember-cpu-4-7-"), "{instance}");
    assert_eq!(instance.len(), "ember-cpu-4-7-".len() + SUFFIX_LEN);
    assert_eq!(fake.pod_names(NS), vec![instance.clone()]);
    let r = only_request(&fake, "POST", "/api/v1/namespaces/ember/pods");
    let pod = r.body.as_ref().expect("a JSON body");
    assert_eq!(at(pod, "/metadata/name"), &json!(instance));
    assert_eq!(
        at(pod, "/metadata/labels"),
        &json!({
            "app.kubernetes.io/name": "ember-worker",
            "app.kubernetes.io/managed-by": "ember-head",
            "ember.dev/node-type": "cpu-4",
            "ember.dev/launch": "7",
        })
    );
    assert_eq!(at(pod, "/spec/restartPolicy"), "Never");
    assert_eq!(at(pod, "/spec/automountServiceAccountToken"), false);
    let container = at(pod, "/spec/containers/0");
    assert_eq!(container["image"], "registry.example.com/ember:0.1.0");
    assert_eq!(container["command"], json!(["ember"]));
    let line = args_line(pod);
    assert!(
        line.starts_with(&format!("worker --head {HEAD} --fingerprint sha256:")),
        "the worker dials the head's Service, not its listen address: {line}"
    );
    assert!(
        line.contains(&format!(
            "--launch 7 --node-type cpu-4 --name {instance} --cpus 4"
        )),
        "{line}"
    );
    assert_eq!(
        container["resources"],
        json!({ "requests": { "cpu": "4" }, "limits": { "cpu": "4" } })
    );
    assert!(pod["spec"].get("nodeSelector").is_none(), "{pod:#}");
    assert_token_from_secret(&r, DEFAULT_TOKEN_SECRET, DEFAULT_TOKEN_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h100_x8_type_asks_for_eight_gpus_on_an_h100_node() {
    let fake = FakeApiServer::start().await;
    let mut config = KubernetesConfig::new("ember:gpu");
    config.ember_path = "/opt/ember/bin/ember".into();
    config.token_secret = SecretKey {
        name: "ember-token".into(),
        key: "join".into(),
    };
    config.accelerators = [("H100".into(), "NVIDIA-H100-80GB-HBM3".into())].into();
    config.node_selector = [("pool".into(), "gpu".into())].into();
    config.tolerations = vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        value: None,
        effect: Some("NoSchedule".into()),
        toleration_seconds: None,
    }];
    config.service_account_name = Some("ember-worker".into());
    config.image_pull_secrets = vec!["regcred".into()];
    config.shm_size = Some("16Gi".into());
    let p = provider(&fake, config);

    // Without head_address, a head listening on a routable address is dialled there.
    let instance = launch(&p, h100x8(), 12, "10.1.2.3:7700")
        .await
        .expect("the pod is created");

    assert!(instance.starts_with("ember-h100-x8-12-"), "{instance}");
    let r = only_request(&fake, "POST", "/api/v1/namespaces/ember/pods");
    let pod = r.body.as_ref().expect("a JSON body");
    assert_eq!(at(pod, "/metadata/labels/ember.dev~1node-type"), "H100_x8");
    assert_eq!(
        at(pod, "/metadata/annotations/ember.dev~1node-type"),
        "H100_x8"
    );
    let spec = at(pod, "/spec");
    assert_eq!(
        spec["containers"][0]["resources"],
        json!({
            "requests": { "cpu": "96" },
            "limits": { "cpu": "96", "nvidia.com/gpu": "8" },
        })
    );
    assert_eq!(
        spec["nodeSelector"],
        json!({ "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu" })
    );
    assert_eq!(
        spec["tolerations"],
        json!([{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }])
    );
    assert_eq!(spec["serviceAccountName"], "ember-worker");
    assert!(
        spec.get("automountServiceAccountToken").is_none(),
        "the named account decides: {spec:#}"
    );
    assert_eq!(spec["imagePullSecrets"], json!([{ "name": "regcred" }]));
    assert_eq!(
        spec["volumes"],
        json!([{ "name": "dshm", "emptyDir": { "medium": "Memory", "sizeLimit": "16Gi" } }])
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([{ "name": "dshm", "mountPath": "/dev/shm" }])
    );
    assert_eq!(
        spec["containers"][0]["command"],
        json!(["/opt/ember/bin/ember"])
    );
    let line = args_line(pod);
    assert!(line.contains("--head 10.1.2.3:7700 "), "{line}");
    assert!(
        line.contains("--launch 12 --node-type H100_x8 --name ember-h100-x8-12-"),
        "{line}"
    );
    assert!(
        !line.contains("--gpus") && !line.contains("--gpu-memory"),
        "the worker finds its GPUs through NVML: {line}"
    );
    assert_token_from_secret(&r, "ember-token", "join");
}

#[test]
fn the_accelerator_selects_its_mapped_label_its_own_name_or_nothing_for_any_gpu() {
    let mut config = KubernetesConfig::new("ember");
    config.accelerator_label = "accelerator".into();
    config.accelerators = [("L4".into(), "nvidia-l4".into())].into();
    let cluster = cluster(HEAD);
    let head = HEAD.parse().expect("an address");
    let selector = |t: &NodeType| {
        let request = LaunchRequest {
            launch: 1,
            node_type: t,
            cluster: &cluster,
        };
        let pod = worker_pod(&config, NS, &request, head, "ember-x-1-bcdfg");
        serde_json::to_value(pod).expect("JSON")["spec"]["nodeSelector"].clone()
    };
    assert_eq!(
        selector(&node_type("l4", 8_000, 1, "L4")),
        json!({ "accelerator": "nvidia-l4" })
    );
    assert_eq!(
        selector(&node_type("a100", 8_000, 2, "A100")),
        json!({ "accelerator": "A100" })
    );
    assert_eq!(
        selector(&node_type("any", 8_000, 1, ANY_ACCELERATOR)),
        Value::Null
    );
    assert_eq!(selector(&cpu4()), Value::Null);
}

#[test]
fn pod_names_are_dns_labels_whatever_the_type_is_called() {
    assert_eq!(
        pod_name("H100_x8.Spot", 12, "bcdfg"),
        "ember-h100-x8-spot-12-bcdfg"
    );
    assert_eq!(pod_name("--", 3, "bcdfg"), "ember-node-3-bcdfg");
    let long = pod_name(&"a-".repeat(100), u64::MAX, "bcdfg");
    assert!(long.len() <= 63, "{long} is {} long", long.len());
    assert!(long.ends_with(&format!("a-{}-bcdfg", u64::MAX)), "{long}");
    for name in [long, pod_name("Ünïcode type", 1, "bcdfg")] {
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.contains("--"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_deletes_the_pod_and_a_pod_already_gone_counts_as_stopped() {
    let fake = FakeApiServer::start().await;
    let mut config = KubernetesConfig::new("ember");
    config.head_address = Some(HEAD.into());
    config.delete_grace_seconds = Some(5);
    let p = provider(&fake, config);
    let instance = launch(&p, cpu4(), 1, HEAD).await.expect("launched");
    let other = launch(&p, cpu4(), 2, HEAD).await.expect("launched");

    stop(&p, &instance).await.expect("the pod is deleted");
    let path = format!("/api/v1/namespaces/ember/pods/{instance}");
    let deletes: Vec<Recorded> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!(deletes[0].path, path);
    assert_eq!(
        at(
            deletes[0].body.as_ref().expect("DeleteOptions"),
            "/gracePeriodSeconds"
        ),
        5
    );
    assert_eq!(fake.pod_names(NS), vec![other], "only that pod is gone");

    // Through the API, as a user would look: it is gone.
    let pods: Api<Pod> = Api::namespaced(fake.client(NS), NS);
    let found = within("a get", pods.get_opt(&instance))
        .await
        .expect("a get");
    assert!(found.is_none());

    // Stopping it again is done: the API server's 404 says so.
    stop(&p, &instance)
        .await
        .expect("a pod already gone is stopped");
    let last = fake.requests().pop().expect("a request");
    assert_eq!(
        (last.method.as_str(), last.path.as_str()),
        ("DELETE", path.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_launch_is_a_launch_error_carrying_the_api_servers_message() {
    let refusals = [
        (
            403,
            "Forbidden",
            "pods is forbidden: User \"system:serviceaccount:ember:ember-head\" cannot create \
             resource \"pods\" in API group \"\" in the namespace \"ember\"",
        ),
        (
            422,
            "Invalid",
            "Pod \"ember-cpu-4-1-bcdfg\" is invalid: spec.containers[0].image: Required value",
        ),
        (
            403,
            "Forbidden",
            "pods \"ember-cpu-4-1-bcdfg\" is forbidden: exceeded quota: compute, requested: \
             cpu=4, used: cpu=8, limited: cpu=10",
        ),
    ];
    for (code, reason, message) in refusals {
        let fake = FakeApiServer::start().await;
        let mut config = KubernetesConfig::new("ember");
        config.head_address = Some(HEAD.into());
        let p = provider(&fake, config);
        fake.refuse_next("POST", code, reason, message);

        let e = launch(&p, cpu4(), 1, HEAD).await.expect_err("refused");

        let ProviderError::Launch {
            node_type,
            reason: why,
        } = &e
        else {
            panic!("not a launch error: {e:?}");
        };
        assert_eq!(node_type, "cpu-4");
        assert!(why.contains(message), "{e}");
        assert!(why.contains(&format!("{code} {reason}")), "{e}");
        assert!(fake.pod_names(NS).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_pod_name_is_tried_again_under_another() {
    let fake = FakeApiServer::start().await;
    let mut config = KubernetesConfig::new("ember");
    config.head_address = Some(HEAD.into());
    let p = provider(&fake, config);
    fake.refuse_next("POST", 409, "AlreadyExists", "pods \"x\" already exists");

    let instance = launch(&p, cpu4(), 1, HEAD)
        .await
        .expect("the second name is free");

    let posts: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.body.as_ref().expect("a pod")["metadata"]["name"].to_string())
        .collect();
    assert_eq!(posts.len(), 2);
    assert_ne!(posts[0], posts[1]);
    assert_eq!(posts[1], json!(instance).to_string());
    assert_eq!(fake.pod_names(NS), vec![instance]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stop_is_a_stop_error_carrying_the_api_servers_message() {
    let fake = FakeApiServer::start().await;
    let p = provider(&fake, KubernetesConfig::new("ember"));
    let message = "pods \"ember-cpu-4-1-bcdfg\" is forbidden: User \"system:serviceaccount:\
                   ember:ember-head\" cannot delete resource \"pods\"";
    fake.refuse_next("DELETE", 403, "Forbidden", message);

    let e = stop(&p, "ember-cpu-4-1-bcdfg").await.expect_err("refused");

    let ProviderError::Stop { instance, reason } = &e else {
        panic!("not a stop error: {e:?}");
    };
    assert_eq!(instance, "ember-cpu-4-1-bcdfg");
    assert!(reason.contains(message), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_a_launch_error_not_a_hang() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://127.0.0.1:{port}").parse().expect("a URL"),
    ))
    .expect("a client");
    let mut config = KubernetesConfig::new("ember");
    config.head_address = Some(HEAD.into());
    let p = Arc::new(KubernetesProvider::with_client(config, client).expect("a provider"));

    let e = launch(&p, cpu4(), 1, HEAD)
        .await
        .expect_err("nothing answers");

    assert!(
        e.to_string().contains("the call to the API server failed"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_address_must_be_one_pods_can_reach() {
    let fake = FakeApiServer::start().await;
    let p = provider(&fake, KubernetesConfig::new("ember"));
    for own in ["0.0.0.0:7700", "127.0.0.1:7700", "[::]:7700"] {
        let e = launch(&p, cpu4(), 1, own).await.expect_err("unreachable");
        assert!(
            e.to_string().contains("set the provider's head_address"),
            "{e}"
        );
    }
    assert!(
        fake.requests().is_empty(),
        "no pod is made for a worker that cannot join"
    );

    // A name is resolved where the head runs: the worker takes an address.
    let mut config = KubernetesConfig::new("ember");
    config.head_address = Some("localhost:7711".into());
    let p = provider(&fake, config);
    launch(&p, cpu4(), 1, "0.0.0.0:7700")
        .await
        .expect("launched");
    let line = args_line(fake.requests()[0].body.as_ref().expect("a pod"));
    assert!(
        line.contains("--head 127.0.0.1:7711 ") || line.contains("--head [::1]:7711 "),
        "{line}"
    );
}

/// The provider section as the node types file will hold it: a tagged enum of providers.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ProviderSection {
    Kubernetes(KubernetesConfig),
}

#[test]
fn the_config_reads_from_its_section_with_defaults_and_refuses_unknown_fields() {
    let ProviderSection::Kubernetes(c) =
        serde_json::from_value(json!({ "kind": "kubernetes", "image": "ember:1" }))
            .expect("only the image is required");
    assert_eq!(c, KubernetesConfig::new("ember:1"));
    assert_eq!(c.ember_path, "ember");
    assert_eq!(c.gpu_resource, "nvidia.com/gpu");
    assert_eq!(c.accelerator_label, "nvidia.com/gpu.product");
    assert_eq!(
        (c.token_secret.name.as_str(), c.token_secret.key.as_str()),
        ("ember-join-token", "token")
    );

    let full = json!({
        "kind": "kubernetes",
        "image": "ember:1",
        "namespace": "gpu",
        "ember_path": "/ember",
        "image_pull_policy": "Always",
        "head_address": "ember-head.gpu.svc:7700",
        "token_secret": { "name": "t", "key": "k" },
        "gpu_resource": "nvidia.com/mig-1g.10gb",
        "accelerator_label": "accelerator",
        "accelerators": { "H100": "h100" },
        "node_selector": { "pool": "gpu" },
        "tolerations": [{ "key": "spot", "operator": "Equal", "value": "true",
                          "effect": "NoExecute", "tolerationSeconds": 30 }],
        "service_account_name": "w",
        "image_pull_secrets": ["regcred"],
        "shm_size": "8Gi",
        "delete_grace_seconds": 10,
    });
    let ProviderSection::Kubernetes(c) = serde_json::from_value(full).expect("every field");
    assert_eq!(c.tolerations[0].toleration_seconds, Some(30));
    assert_eq!(c.delete_grace_seconds, Some(10));

    for (bad, field) in [
        (
            json!({ "kind": "kubernetes", "image": "e", "imagePullPolicy": "Always" }),
            "imagePullPolicy",
        ),
        (
            json!({ "kind": "kubernetes", "image": "e", "token_secret": { "name": "t", "value": "x" } }),
            "value",
        ),
        (
            json!({ "kind": "kubernetes", "image": "e", "tolerations": [{ "kye": "a" }] }),
            "kye",
        ),
        (json!({ "kind": "kubernetes" }), "image"),
    ] {
        let e = serde_json::from_value::<ProviderSection>(bad).expect_err("refused");
        assert!(e.to_string().contains(field), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_every_launch_would_fail_on_are_refused_at_the_start() {
    let fake = FakeApiServer::start().await;
    type Spoil = fn(&mut KubernetesConfig);
    let cases: [(Spoil, &str); 5] = [
        (|c| c.image = " ".into(), "image"),
        (
            |c| c.image_pull_policy = Some("always".into()),
            "image_pull_policy",
        ),
        (
            |c| c.head_address = Some("ember-head".into()),
            "head_address",
        ),
        (
            |c| c.head_address = Some("ember-head:0".into()),
            "head_address",
        ),
        (|c| c.token_secret.key = String::new(), "token_secret.key"),
    ];
    for (spoil, field) in cases {
        let mut config = KubernetesConfig::new("ember");
        spoil(&mut config);
        let e = KubernetesProvider::with_client(config, fake.client(NS)).expect_err("refused");
        assert!(
            matches!(&e, KubernetesError::InvalidConfig { field: f, .. } if *f == field),
            "{e}"
        );
    }
    assert!(fake.requests().is_empty());
}

/// Where the real-cluster test finds its cluster: `EMBER_TEST_KUBECONFIG`, else `KUBECONFIG`.
fn test_kubeconfig() -> Option<(String, String)> {
    ["EMBER_TEST_KUBECONFIG", "KUBECONFIG"]
        .into_iter()
        .find_map(|var| Some((var.to_string(), std::env::var(var).ok()?)))
        .filter(|(_, path)| !path.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: set EMBER_TEST_KUBECONFIG (or KUBECONFIG), run with --ignored"]
async fn a_real_cluster_runs_a_worker_pod_and_deletes_it() {
    use std::io::Write;
    let Some((var, path)) = test_kubeconfig() else {
        // Written past the test harness's capture, so that a skip is never silent.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED a_real_cluster_runs_a_worker_pod_and_deletes_it: neither \
             EMBER_TEST_KUBECONFIG nor KUBECONFIG is set (point one at a cluster's kubeconfig; \
             EMBER_TEST_NAMESPACE and EMBER_TEST_IMAGE are optional)"
        );
        return;
    };
    let first = std::env::split_paths(&path).next().expect("a path");
    let kubeconfig =
        kube::config::Kubeconfig::read_from(&first).unwrap_or_else(|e| panic!("{var}={path}: {e}"));
    let options = kube::config::KubeConfigOptions {
        context: std::env::var("EMBER_TEST_KUBE_CONTEXT").ok(),
        ..Default::default()
    };
    let kube_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap_or_else(|e| panic!("{var}={path}: {e}"));
    let client = kube::Client::try_from(kube_config).expect("a client");

    // A small image without ember: the pod's command is `echo worker ...`, so the pod only
    // has to be made, scheduled and deleted. Nothing dials the head's documentation address.
    let mut config =
        KubernetesConfig::new(std::env::var("EMBER_TEST_IMAGE").unwrap_or("busybox:1.36".into()));
    config.ember_path = "echo".into();
    config.namespace = std::env::var("EMBER_TEST_NAMESPACE").ok();
    config.head_address = Some("192.0.2.1:7700".into());
    config.delete_grace_seconds = Some(0);
    let p = Arc::new(KubernetesProvider::with_client(config, client.clone()).expect("a provider"));
    let small = node_type("ci-small", 100, 0, "");

    let instance = launch(&p, small, 1, HEAD)
        .await
        .expect("the pod is created");

    let pods: Api<Pod> = Api::namespaced(client, p.namespace());
    let pod = within("a get", pods.get(&instance))
        .await
        .expect("the pod is there");
    let labels = pod.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("ember.dev/node-type").map(String::as_str),
        Some("ci-small")
    );
    let spec = pod.spec.expect("a spec");
    let env = spec.containers[0].env.clone().unwrap_or_default();
    assert!(env.iter().all(|e| e.value.as_deref() != Some(TOKEN)));

    stop(&p, &instance).await.expect("the pod is deleted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match within("a get", pods.get_opt(&instance)).await {
            Ok(None) => break,
            Ok(Some(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Ok(Some(_)) => panic!("{instance} is still there 120 s after its deletion"),
            Err(e) => panic!("cannot read {instance}: {e}"),
        }
    }
    stop(&p, &instance)
        .await
        .expect("a pod already gone is stopped");
}
