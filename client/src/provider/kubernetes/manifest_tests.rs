//! The manifests users apply (`examples/kubernetes/`): every document reads as its Kubernetes
//! type with no field lost (so a misspelt field fails here, not in someone's cluster), and the
//! documents, the node types file and the README agree on names, ports and paths.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{KubernetesConfig, SecretKey};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes")
}

fn read(name: &str) -> String {
    let path = dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where `got` differs from `want`, by path: a field the type does not have is dropped when
/// read, so it shows here.
fn differences(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: no such field (misspelt?)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: appeared when read"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), v, w, out);
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: {want} read as {got}")),
    }
}

/// The documents of a manifest file, each read as its type.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    claims: Vec<PersistentVolumeClaim>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
}

impl Manifests {
    fn read(name: &str) -> Self {
        fn typed<T: DeserializeOwned + Serialize>(name: &str, i: usize, doc: &Value) -> T {
            let value: T = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
            let mut out = Vec::new();
            differences(
                "",
                doc,
                &serde_json::to_value(&value).expect("JSON"),
                &mut out,
            );
            assert!(out.is_empty(), "{name} document {i}:\n{}", out.join("\n"));
            value
        }
        let text = read(name);
        let mut m = Manifests::default();
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(de).unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
            assert_eq!(doc["metadata"]["namespace"], "ember", "{name} document {i}");
            match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
                (Some("v1"), Some("ServiceAccount")) => {
                    m.service_accounts.push(typed(name, i, &doc))
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("Role")) => {
                    m.roles.push(typed(name, i, &doc))
                }
                (Some("rbac.authorization.k8s.io/v1"), Some("RoleBinding")) => {
                    m.role_bindings.push(typed(name, i, &doc))
                }
                (Some("v1"), Some("PersistentVolumeClaim")) => m.claims.push(typed(name, i, &doc)),
                (Some("apps/v1"), Some("Deployment")) => m.deployments.push(typed(name, i, &doc)),
                (Some("v1"), Some("Service")) => m.services.push(typed(name, i, &doc)),
                other => panic!("{name} document {i}: unexpected {other:?}"),
            }
        }
        m
    }
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().expect("a name")
}

#[test]
fn the_rbac_manifest_lets_the_heads_account_make_and_delete_pods() {
    let m = Manifests::read("rbac.yaml");
    let ([account], [role], [binding]) = (
        m.service_accounts.as_slice(),
        m.roles.as_slice(),
        m.role_bindings.as_slice(),
    ) else {
        panic!("rbac.yaml holds one ServiceAccount, Role and RoleBinding");
    };
    let rules = role.rules.as_deref().unwrap_or_default();
    for verb in ["create", "get", "list", "delete"] {
        assert!(
            rules.iter().any(|r| {
                r.api_groups.as_deref() == Some(&[String::new()][..])
                    && r.resources.as_deref() == Some(&["pods".to_string()][..])
                    && r.verbs.iter().any(|v| v == verb)
            }),
            "the Role lets it {verb} pods"
        );
    }
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", name_of(&role.metadata))
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && s.name == name_of(&account.metadata)
        && s.namespace.as_deref() == Some("ember")));
}

#[test]
fn the_head_manifest_runs_the_autoscaling_head_on_its_volume_behind_a_udp_service() {
    let m = Manifests::read("head.yaml");
    let rbac = Manifests::read("rbac.yaml");
    let ([claim], [deployment], [service]) = (
        m.claims.as_slice(),
        m.deployments.as_slice(),
        m.services.as_slice(),
    ) else {
        panic!("head.yaml holds one PersistentVolumeClaim, Deployment and Service");
    };
    let spec = deployment.spec.as_ref().expect("a spec");
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "one head at a time holds the journal"
    );
    let pod = spec.template.spec.as_ref().expect("a pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(name_of(&rbac.service_accounts[0].metadata))
    );
    let [head] = pod.containers.as_slice() else {
        panic!("one container");
    };
    let args = head.args.clone().unwrap_or_default().join(" ");
    assert_eq!(head.command.as_deref(), Some(&["ember".to_string()][..]));
    assert!(
        args.starts_with("head --autoscale /etc/ember/node-types.json --listen 0.0.0.0:7700"),
        "{args}"
    );
    assert!(args.contains("--state-dir /var/lib/ember"), "{args}");

    // The state directory is the claim; the node types file is the ConfigMap README.md makes.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounted = |path: &str| {
        let mount = head
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|v| v.mount_path == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume {}", mount.name))
    };
    assert_eq!(
        mounted("/var/lib/ember")
            .persistent_volume_claim
            .as_ref()
            .map(|c| c.claim_name.as_str()),
        Some(name_of(&claim.metadata))
    );
    let config_map = mounted("/etc/ember")
        .config_map
        .as_ref()
        .map(|c| c.name.clone())
        .expect("the node types from a ConfigMap");
    assert!(
        read("README.md").contains(&format!(
            "create configmap {config_map} --from-file=node-types.json"
        )),
        "README.md makes the ConfigMap {config_map}"
    );

    // The Service selects the head's pod and carries QUIC (UDP) to its port.
    let service_spec = service.spec.as_ref().expect("a spec");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    let labels = labels.unwrap_or_default();
    for (k, v) in service_spec.selector.clone().unwrap_or_default() {
        assert_eq!(
            labels.get(&k),
            Some(&v),
            "the Service selects the head by {k}"
        );
    }
    let [port] = service_spec.ports.as_deref().unwrap_or_default() else {
        panic!("one port");
    };
    assert_eq!((port.port, port.protocol.as_deref()), (7700, Some("UDP")));
    let container_port = head
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|p| port.target_port == Some(IntOrString::String(p.name.clone().unwrap_or_default())))
        .expect("the Service's target port is the head's");
    assert_eq!(
        (
            container_port.container_port,
            container_port.protocol.as_deref()
        ),
        (7700, Some("UDP"))
    );
}

/// The provider section as the node types file holds it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum ProviderSection {
    Kubernetes(KubernetesConfig),
}

#[test]
fn the_example_node_types_name_the_heads_service_and_the_tokens_secret() {
    let file: Value = serde_json::from_str(&read("node-types.json")).expect("JSON");
    let ProviderSection::Kubernetes(config) =
        serde_json::from_value(file["provider"].clone()).expect("a kubernetes provider section");
    config.check().expect("valid settings");
    let m = Manifests::read("head.yaml");
    let service = &m.services[0];
    assert_eq!(config.namespace.as_deref(), Some("ember"));
    assert_eq!(
        config.head_address.as_deref(),
        Some(
            format!(
                "{}.ember.svc.cluster.local:7700",
                name_of(&service.metadata)
            )
            .as_str()
        )
    );
    let head = &m.deployments[0].spec.as_ref().expect("a spec").template;
    let image = head.spec.as_ref().expect("a pod").containers[0]
        .image
        .clone();
    assert_eq!(
        image.as_ref(),
        Some(&config.image),
        "the head and workers share an image"
    );
    assert_eq!(config.token_secret, SecretKey::default());
    assert!(
        read("README.md").contains(&format!(
            "create secret generic {} --from-file={}=",
            config.token_secret.name, config.token_secret.key
        )),
        "README.md makes the token's Secret"
    );
    // Every GPU type's accelerator is selected by the label GPU feature discovery sets.
    let types = file["node_types"].as_array().expect("node types");
    for t in types.iter().filter(|t| t["gpus"].as_u64().unwrap_or(0) > 0) {
        let accelerator = t["accelerator"].as_str().expect("an accelerator");
        assert!(
            config.accelerators.contains_key(accelerator),
            "{accelerator} has no label value"
        );
    }
}
