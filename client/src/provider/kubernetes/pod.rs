//! A launch's worker pod, built without I/O: its name, labels, command line, token reference,
//! resources and placement.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ember_core::security::ClusterFile;
use ember_head::LaunchRequest;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, SecretKeySelector, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{KubernetesConfig, ANY_ACCELERATOR};
use crate::provider::{WorkerInvocation, TOKEN_VAR};

/// The label every worker pod carries, with the value [`WORKER_APP`].
pub(super) const APP_LABEL: &str = "app.kubernetes.io/name";
/// The value of [`APP_LABEL`] on worker pods.
pub(super) const WORKER_APP: &str = "ember-worker";
/// The label (and annotation, exactly) of a worker pod's node type.
pub(super) const NODE_TYPE_LABEL: &str = "ember.dev/node-type";
/// The label of a worker pod's launch.
pub(super) const LAUNCH_LABEL: &str = "ember.dev/launch";

/// The longest name a pod is given: a DNS label, so that it is also its hostname whole.
const MAX_NAME: usize = 63;
/// The characters of a name's random suffix: Kubernetes' own for generated names (no vowels,
/// so no words).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The length of a name's random suffix.
pub(super) const SUFFIX_LEN: usize = 5;

/// A random suffix for a pod name.
pub(super) fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..SUFFIX_LEN)
        .map(|_| SUFFIX_ALPHABET[rng.gen_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect()
}

/// `ember-TYPE-LAUNCH-SUFFIX`: the type lowercased with every other character than letters,
/// digits and `-` made `-`, shortened so that the whole is a DNS label (63 characters).
pub(super) fn pod_name(node_type: &str, launch: u64, suffix: &str) -> String {
    let tail = format!("-{launch}-{suffix}");
    let room = MAX_NAME - "ember-".len() - tail.len();
    let mut kind = String::new();
    for c in node_type.chars().map(|c| c.to_ascii_lowercase()) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (kind.is_empty() || kind.ends_with('-'))) {
            kind.push(c);
        }
    }
    kind.truncate(room);
    let kind = kind.trim_end_matches('-');
    let kind = if kind.is_empty() { "node" } else { kind };
    format!("ember-{kind}{tail}")
}

/// `value` as a label value (at most 63 of letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit), or `None` when nothing of it is left.
fn label_value(value: &str) -> Option<String> {
    let mut v: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    v.truncate(MAX_NAME);
    let v = v.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!v.is_empty()).then(|| v.to_string())
}

/// A CPU quantity in Kubernetes' notation: `4`, or `1500m`.
fn cpu_quantity(millis: u64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// The node label value that selects `accelerator`, or `None` for a type naming none.
fn accelerator_value(config: &KubernetesConfig, accelerator: &str) -> Option<String> {
    match config.accelerators.get(accelerator) {
        Some(v) => Some(v.clone()),
        None if accelerator == ANY_ACCELERATOR => None,
        None => Some(accelerator.to_string()),
    }
}

/// The pod `name` in `namespace` whose worker answers `request`, dialling the head at `head`.
pub(super) fn worker_pod(
    config: &KubernetesConfig,
    namespace: &str,
    request: &LaunchRequest<'_>,
    head: SocketAddr,
    name: &str,
) -> Pod {
    let t = request.node_type;
    let r = &t.resources;
    let cluster = ClusterFile {
        address: head,
        ..request.cluster.clone()
    };
    // Real GPUs: the worker finds those the device plugin gave its container through NVML.
    let mut invocation = WorkerInvocation::new(
        &LaunchRequest {
            cluster: &cluster,
            ..*request
        },
        false,
    );
    // The worker is named after its pod, which is unique across head lives.
    if let Some(i) = invocation.args.iter().position(|a| a == "--name") {
        if let Some(value) = invocation.args.get_mut(i + 1) {
            *value = name.to_string();
        }
    }
    let env = invocation
        .env
        .into_iter()
        .map(|(var, value)| {
            if var == TOKEN_VAR {
                // From the Secret: the token itself is never in the pod.
                EnvVar {
                    name: var,
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: config.token_secret.name.clone(),
                            key: config.token_secret.key.clone(),
                            optional: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                }
            } else {
                EnvVar {
                    name: var,
                    value: Some(value),
                    value_from: None,
                }
            }
        })
        .collect();

    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if r.cpu_millis > 0 {
        requests.insert("cpu".to_string(), cpu_quantity(r.cpu_millis));
        limits.insert("cpu".to_string(), cpu_quantity(r.cpu_millis));
    }
    let mut node_selector = config.node_selector.clone();
    if let Some(first) = r.gpus.first() {
        // Extended resources are asked as limits (the request follows). GPU memory is no
        // Kubernetes resource: the accelerator's selector decides it.
        limits.insert(
            config.gpu_resource.clone(),
            Quantity(r.gpus.len().to_string()),
        );
        if let Some(value) = accelerator_value(config, &first.accelerator) {
            node_selector.insert(config.accelerator_label.clone(), value);
        }
    }

    let mut labels = BTreeMap::from([
        (APP_LABEL.to_string(), WORKER_APP.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "ember-head".to_string(),
        ),
        (LAUNCH_LABEL.to_string(), request.launch.to_string()),
    ]);
    if let Some(v) = label_value(&t.name) {
        labels.insert(NODE_TYPE_LABEL.to_string(), v);
    }
    let annotations = BTreeMap::from([(NODE_TYPE_LABEL.to_string(), t.name.clone())]);

    let (volumes, volume_mounts) = match &config.shm_size {
        Some(size) => (
            Some(vec![Volume {
                name: "dshm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(size.clone())),
                }),
                ..Volume::default()
            }]),
            Some(vec![VolumeMount {
                name: "dshm".into(),
                mount_path: "/dev/shm".into(),
                ..VolumeMount::default()
            }]),
        ),
        None => (None, None),
    };

    let nonempty = |m: BTreeMap<String, Quantity>| (!m.is_empty()).then_some(m);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            service_account_name: config.service_account_name.clone(),
            // A worker never calls the Kubernetes API: without a service account of the
            // user's choosing, no API token is put in its pod.
            automount_service_account_token: config.service_account_name.is_none().then_some(false),
            image_pull_secrets: (!config.image_pull_secrets.is_empty()).then(|| {
                config
                    .image_pull_secrets
                    .iter()
                    .map(|name| LocalObjectReference { name: name.clone() })
                    .collect()
            }),
            node_selector: (!node_selector.is_empty()).then_some(node_selector),
            tolerations: (!config.tolerations.is_empty()).then(|| {
                config
                    .tolerations
                    .iter()
                    .map(|t| Toleration {
                        key: t.key.clone(),
                        operator: t.operator.clone(),
                        value: t.value.clone(),
                        effect: t.effect.clone(),
                        toleration_seconds: t.toleration_seconds,
                    })
                    .collect()
            }),
            volumes,
            containers: vec![Container {
                name: "worker".into(),
                image: Some(config.image.clone()),
                image_pull_policy: config.image_pull_policy.clone(),
                command: Some(vec![config.ember_path.clone()]),
                args: Some(invocation.args),
                env: Some(env),
                resources: Some(ResourceRequirements {
                    requests: nonempty(requests),
                    limits: nonempty(limits),
                    claims: None,
                }),
                volume_mounts,
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}
