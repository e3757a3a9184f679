//! The `kubernetes` node provider: each launch becomes one pod, created through the Kubernetes
//! API in one namespace, running `ember worker` ([`WorkerInvocation`](super::WorkerInvocation))
//! in the configured image. An instance is the pod's name; stopping it deletes the pod.
//!
//! A worker pod (`pod.rs` builds it):
//!
//! - is named `ember-TYPE-LAUNCH-XXXXX` (the type made DNS-safe, a random suffix since launch
//!   numbers start again with each head life) and labelled `app.kubernetes.io/name:
//!   ember-worker`, `ember.dev/node-type` and `ember.dev/launch`; its worker is named after it;
//! - takes the join token from a Secret (`valueFrom.secretKeyRef` into `EMBER_TOKEN`), never
//!   inline in the pod;
//! - requests and is limited to the node type's CPUs, and for a GPU type is limited to its
//!   GPUs (`nvidia.com/gpu: N`), on a node chosen by a `nodeSelector` for its accelerator.
//!   GPU memory is not a Kubernetes resource: the accelerator's selector picks the GPU model,
//!   and so its memory, and the worker reports what NVML finds;
//! - never restarts (`restartPolicy: Never`): a worker that ends is a node gone, and the
//!   autoscaler launches another if it needs one.
//!
//! The calls block (the head makes them on a blocking thread) by driving the async client on
//! the runtime the provider was made in. `examples/kubernetes/` holds the manifests users apply:
//! the head's RBAC, Deployment and Service, and a node types file.

mod pod;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod manifest_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ember_head::{LaunchRequest, NodeProvider, ProviderError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde::Deserialize;

/// How long one call to the API server may take before the launch or stop fails.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a launch tries another name when the one it drew is taken (a pod left by an
/// earlier head life can hold it).
const NAME_ATTEMPTS: usize = 3;

/// The `kubernetes` provider's settings: the `"provider"` section of the node types file with
/// `"kind": "kubernetes"`. Every field but `image` has a default; an unknown field is refused.
///
/// ```json
/// {
///   "kind": "kubernetes",
///   "image": "registry.example.com/ember:0.1.0",
///   "namespace": "ember",
///   "head_address": "ember-head.ember.svc.cluster.local:7700",
///   "token_secret": { "name": "ember-join-token", "key": "token" },
///   "accelerators": { "H100": "NVIDIA-H100-80GB-HBM3", "L4": "NVIDIA-L4" },
///   "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
///   "shm_size": "16Gi"
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The container image of the worker pods; it must hold the `ember` executable
    /// (`ember_path`) and, for GPU types, run where NVIDIA's container runtime gives it the
    /// driver's libraries (NVML finds the GPUs). Required.
    pub image: String,
    /// The namespace the worker pods are made in. Default: the client's, that is the head's
    /// own namespace when it runs in a pod, else the kubeconfig context's, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The `ember` executable in the image: a path, or a name found on the image's `PATH`.
    /// Default `ember`.
    #[serde(default = "default_ember_path")]
    pub ember_path: String,
    /// The image pull policy: `Always`, `IfNotPresent` or `Never`. Default: Kubernetes' own
    /// (`Always` for a `:latest` image, else `IfNotPresent`).
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// `HOST:PORT` the workers dial for the head, usually the head's Service:
    /// `ember-head.ember.svc.cluster.local:7700`. A name is resolved by the provider where the
    /// head runs, at each launch (a Service's name gives its cluster IP, stable while the
    /// Service lives), since workers take an IP address. Default: the address the head
    /// listens on, which is refused when it is unspecified (`0.0.0.0`) or loopback: pods
    /// cannot reach either.
    #[serde(default)]
    pub head_address: Option<String>,
    /// The Secret and key holding the cluster's join token, given to the worker as
    /// `EMBER_TOKEN`. Default `ember-join-token`, key `token`, as in the example manifests.
    #[serde(default)]
    pub token_secret: SecretKey,
    /// The extended resource a pod's GPUs are asked as. Default `nvidia.com/gpu` (NVIDIA's
    /// device plugin); e.g. `nvidia.com/mig-1g.10gb` for MIG slices.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    /// The node label a GPU type's accelerator is selected by. Default
    /// `nvidia.com/gpu.product`, set by NVIDIA's GPU feature discovery.
    #[serde(default = "default_accelerator_label")]
    pub accelerator_label: String,
    /// Ember accelerator names (a node type's `accelerator`, e.g. `H100`) to the values of
    /// `accelerator_label` (e.g. `NVIDIA-H100-80GB-HBM3`). A name not here is used as the value
    /// itself, except `GPU` (a type that names no accelerator), which selects no node label.
    #[serde(default)]
    pub accelerators: BTreeMap<String, String>,
    /// Node labels every worker pod must match, besides its accelerator's.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the worker pods tolerate, as in a pod spec (GPU nodes are often tainted
    /// `nvidia.com/gpu:NoSchedule`).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The service account the worker pods run as. Default: none named, and no API token
    /// mounted in them (a worker never calls the Kubernetes API).
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// Secrets (of type `kubernetes.io/dockerconfigjson`) to pull the image with.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// A memory-backed `/dev/shm` of this size (a quantity, e.g. `16Gi`) in each worker pod:
    /// the workers' shared-memory collectives and sockets live there, and a container's own is
    /// 64 MiB. Default: none (the container's own).
    #[serde(default)]
    pub shm_size: Option<String>,
    /// The grace period of a stopped pod, in seconds (its worker drains on SIGTERM). Default:
    /// the pod's (30 s).
    #[serde(default)]
    pub delete_grace_seconds: Option<u32>,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKey {
    /// The Secret's name, in the pods' namespace.
    pub name: String,
    /// The key within it.
    pub key: String,
}

impl Default for SecretKey {
    fn default() -> Self {
        SecretKey {
            name: DEFAULT_TOKEN_SECRET.into(),
            key: DEFAULT_TOKEN_KEY.into(),
        }
    }
}

/// A taint the worker pods tolerate, as a pod spec's `tolerations` entry has it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// The taint's key; none with `operator: Exists` tolerates every taint.
    #[serde(default)]
    pub key: Option<String>,
    /// `Equal` (the default) or `Exists`.
    #[serde(default)]
    pub operator: Option<String>,
    /// The taint's value, with `Equal`.
    #[serde(default)]
    pub value: Option<String>,
    /// The taint's effect (`NoSchedule`, `PreferNoSchedule`, `NoExecute`); none: every effect.
    #[serde(default)]
    pub effect: Option<String>,
    /// With `NoExecute`, how long the pod stays once tainted; none: for ever.
    #[serde(default, alias = "tolerationSeconds")]
    pub toleration_seconds: Option<i64>,
}

/// The Secret holding the join token in the example manifests.
pub const DEFAULT_TOKEN_SECRET: &str = "ember-join-token";
/// The key of the join token in that Secret.
pub const DEFAULT_TOKEN_KEY: &str = "token";
/// The accelerator name of a node type that names none: it selects no node label.
pub const ANY_ACCELERATOR: &str = "GPU";

fn default_ember_path() -> String {
    "ember".into()
}
fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
fn default_accelerator_label() -> String {
    "nvidia.com/gpu.product".into()
}

impl KubernetesConfig {
    /// Pods of `image`, every other setting its default.
    pub fn new(image: impl Into<String>) -> Self {
        KubernetesConfig {
            image: image.into(),
            namespace: None,
            ember_path: default_ember_path(),
            image_pull_policy: None,
            head_address: None,
            token_secret: SecretKey::default(),
            gpu_resource: default_gpu_resource(),
            accelerator_label: default_accelerator_label(),
            accelerators: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            service_account_name: None,
            image_pull_secrets: Vec::new(),
            shm_size: None,
            delete_grace_seconds: None,
        }
    }

    /// Refuses what would make every launch fail, naming the field.
    fn check(&self) -> Result<(), KubernetesError> {
        let invalid =
            |field: &'static str, reason: String| KubernetesError::InvalidConfig { field, reason };
        let nonempty = [
            ("image", &self.image),
            ("ember_path", &self.ember_path),
            ("token_secret.name", &self.token_secret.name),
            ("token_secret.key", &self.token_secret.key),
            ("gpu_resource", &self.gpu_resource),
            ("accelerator_label", &self.accelerator_label),
        ];
        for (field, value) in nonempty {
            if value.trim().is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
        }
        if let Some(p) = &self.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
                return Err(invalid(
                    "image_pull_policy",
                    format!("`{p}`: use Always, IfNotPresent or Never"),
                ));
            }
        }
        if let Some(a) = &self.head_address {
            let port = a
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
                return Err(invalid(
                    "head_address",
                    format!("`{a}` is not HOST:PORT, e.g. ember-head.ember.svc.cluster.local:7700"),
                ));
            }
        }
        if let Some(i) = self.image_pull_secrets.iter().position(|s| s.is_empty()) {
            return Err(invalid("image_pull_secrets", format!("entry {i} is empty")));
        }
        Ok(())
    }
}

/// Why a Kubernetes provider could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// A setting is invalid; fix it in the provider section.
    #[error("invalid kubernetes provider setting {field}: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No client could be made: outside a pod, set `KUBECONFIG` or write `~/.kube/config`; in
    /// one, check its service account.
    #[error("cannot make a Kubernetes client (in a pod: its service account; elsewhere: KUBECONFIG or ~/.kube/config): {0}")]
    Client(#[source] kube::Error),
    /// The provider was made outside a Tokio runtime, which it needs to drive its client.
    #[error("the kubernetes provider must be made inside a Tokio runtime")]
    NoRuntime,
}

/// Worker pods through the Kubernetes API, one per launch.
///
/// Its [`NodeProvider`] calls block on the Tokio runtime it was made in, so they must be made
/// off that runtime's worker threads: on a blocking thread (`spawn_blocking`), as the head's
/// shell makes them, or on a thread of one's own.
pub struct KubernetesProvider {
    config: KubernetesConfig,
    namespace: String,
    pods: Api<Pod>,
    /// The runtime its blocking calls drive the client on.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesProvider {
    /// Checks `config` and connects as the environment says: in a pod, with its service
    /// account; elsewhere, with the kubeconfig (`KUBECONFIG`, else `~/.kube/config`). Must be
    /// called inside a Tokio runtime, which the provider keeps for its calls.
    pub async fn new(config: KubernetesConfig) -> Result<Self, KubernetesError> {
        config.check()?;
        let client = kube::Client::try_default()
            .await
            .map_err(KubernetesError::Client)?;
        Self::with_client(config, client)
    }

    /// Checks `config` and uses `client` (a kubeconfig of one's choosing, or a test's API
    /// server). Must be called inside a Tokio runtime, which the provider keeps for its calls.
    pub fn with_client(
        config: KubernetesConfig,
        client: kube::Client,
    ) -> Result<Self, KubernetesError> {
        config.check()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| KubernetesError::NoRuntime)?;
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let pods = Api::namespaced(client, &namespace);
        tracing::info!(%namespace, image = %config.image, "kubernetes provider ready");
        Ok(KubernetesProvider {
            config,
            namespace,
            pods,
            runtime,
        })
    }

    /// The namespace its pods are made in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The address the workers dial for the head whose own address is `own`.
    async fn head_address(&self, own: SocketAddr) -> Result<SocketAddr, String> {
        let Some(address) = &self.config.head_address else {
            if own.ip().is_unspecified() || own.ip().is_loopback() {
                return Err(format!(
                    "the head listens on {own}, which pods cannot reach: set the provider's \
                     head_address, e.g. to the head's Service \
                     (ember-head.ember.svc.cluster.local:7700)"
                ));
            }
            return Ok(own);
        };
        if let Ok(addr) = address.parse() {
            return Ok(addr);
        }
        let found = tokio::time::timeout(API_TIMEOUT, tokio::net::lookup_host(address.as_str()))
            .await
            .map_err(|_| format!("head_address {address}: no answer from DNS"))?
            .map_err(|e| format!("head_address {address}: {e}"))?
            .next();
        found.ok_or_else(|| format!("head_address {address}: no address"))
    }
}

/// What went wrong with a call to the API server, with its own message when it answered.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => {
            let mut text = format!("the call to the API server failed: {other}");
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                // Some errors repeat their source's text in their own.
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(&format!(": {s_text}"));
                }
                source = s.source();
            }
            text
        }
    }
}

impl NodeProvider for KubernetesProvider {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn launch(&self, request: &LaunchRequest<'_>) -> Result<String, ProviderError> {
        let t = request.node_type;
        let fail = |reason: String| ProviderError::Launch {
            node_type: t.name.clone(),
            reason,
        };
        let head = self
            .runtime
            .block_on(self.head_address(request.cluster.address))
            .map_err(fail)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let name = pod::pod_name(&t.name, request.launch, &pod::random_suffix());
            let body = pod::worker_pod(&self.config, &self.namespace, request, head, &name);
            let created = self.runtime.block_on(tokio::time::timeout(
                API_TIMEOUT,
                self.pods.create(&PostParams::default(), &body),
            ));
            match created {
                Ok(Ok(_)) => {
                    tracing::info!(
                        launch = request.launch,
                        node_type = %t.name,
                        pod = %name,
                        namespace = %self.namespace,
                        %head,
                        "worker pod created"
                    );
                    return Ok(name);
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 && attempt < NAME_ATTEMPTS => {
                    tracing::debug!(pod = %name, "pod name taken; drawing another");
                }
                Ok(Err(e)) => return Err(fail(describe(&e))),
                Err(_) => {
                    return Err(fail(format!(
                        "the API server did not answer within {API_TIMEOUT:?}"
                    )))
                }
            }
        }
    }

    fn stop(&self, instance: &str) -> Result<(), ProviderError> {
        let fail = |reason: String| ProviderError::Stop {
            instance: instance.to_string(),
            reason,
        };
        let params = DeleteParams {
            grace_period_seconds: self.config.delete_grace_seconds,
            ..DeleteParams::default()
        };
        let deleted = self.runtime.block_on(tokio::time::timeout(
            API_TIMEOUT,
            self.pods.delete(instance, &params),
        ));
        match deleted {
            Ok(Ok(_)) => {
                tracing::info!(pod = %instance, namespace = %self.namespace, "worker pod deleted");
                Ok(())
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {
                tracing::debug!(pod = %instance, "worker pod already gone");
                Ok(())
            }
            Ok(Err(e)) => Err(fail(describe(&e))),
            Err(_) => Err(fail(format!(
                "the API server did not answer within {API_TIMEOUT:?}"
            ))),
        }
    }
}
