//! `FakeApiServer`: a stand-in for the Kubernetes API server at the HTTP seam, for tests. It
//! serves plain HTTP on 127.0.0.1 and knows only pods in namespaces: create (`POST`), read
//! (`GET`) and delete (`DELETE`), answering as the real one does (201, 200, 404 and 409 with a
//! `Status` body). It records every request, and can be told to refuse the next request of a
//! method with a given status, as RBAC (403), validation (422) or a quota (403) would.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// One request the fake received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// `POST`, `GET`, `DELETE`, ...
    pub(crate) method: String,
    /// The path, without the query.
    pub(crate) path: String,
    /// The body, parsed as JSON, when there was one.
    pub(crate) body: Option<Value>,
    /// The body as sent.
    pub(crate) raw: String,
}

/// An answer the fake gives instead of serving a request.
struct Refusal {
    method: Method,
    code: u16,
    reason: String,
    message: String,
}

#[derive(Default)]
struct Shared {
    /// Pods by namespace and name.
    pods: BTreeMap<(String, String), Value>,
    requests: Vec<Recorded>,
    refusals: VecDeque<Refusal>,
}

/// A fake Kubernetes API server on 127.0.0.1 (see the module's documentation).
pub(crate) struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    /// Starts it on a free port.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("its address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let for_accept = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = for_accept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(shared.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            shared,
            accept,
        }
    }

    /// Its URL, `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client of it, without TLS or credentials, whose default namespace is `namespace`.
    pub(crate) fn client(&self, namespace: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("a URL"));
        config.default_namespace = namespace.to_string();
        kube::Client::try_from(config).expect("a client of the fake API server")
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the next request of `method` with status `code`, its `reason` (e.g.
    /// `Forbidden`) and `message`, instead of serving it.
    pub(crate) fn refuse_next(&self, method: &str, code: u16, reason: &str, message: &str) {
        self.shared().refusals.push_back(Refusal {
            method: method.parse().expect("an HTTP method"),
            code,
            reason: reason.into(),
            message: message.into(),
        });
    }

    /// Every request so far, in order.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.shared().requests.clone()
    }

    /// The names of the pods it holds in `namespace`.
    pub(crate) fn pod_names(&self, namespace: &str) -> Vec<String> {
        self.shared()
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, name)| name.clone())
            .collect()
    }
}

/// A `Status` answer, as the API server writes its errors.
fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    answer(code, &body)
}

fn answer(code: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("a status code"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a response")
}

async fn serve(
    shared: Arc<Mutex<Shared>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(status(400, "BadRequest", &format!("unreadable body: {e}"))),
    };
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let path = parts.uri.path().to_string();
    let mut shared = shared.lock().unwrap_or_else(|p| p.into_inner());
    shared.requests.push(Recorded {
        method: parts.method.to_string(),
        path: path.clone(),
        body: parsed.clone(),
        raw,
    });
    if let Some(i) = shared
        .refusals
        .iter()
        .position(|r| r.method == parts.method)
    {
        let r = shared.refusals.remove(i).expect("found");
        return Ok(status(r.code, &r.reason, &r.message));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let response = match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => {
            let Some(mut pod) = parsed else {
                return Ok(status(400, "BadRequest", "the body is not JSON"));
            };
            let Some(name) = pod["metadata"]["name"].as_str().map(str::to_string) else {
                return Ok(status(
                    422,
                    "Invalid",
                    "Pod is invalid: metadata.name: Required",
                ));
            };
            let key = (ns.to_string(), name.clone());
            if shared.pods.contains_key(&key) {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    &format!("pods \"{name}\" already exists"),
                ));
            }
            pod["metadata"]["namespace"] = json!(ns);
            pod["metadata"]["uid"] = json!(format!("uid-{}", shared.requests.len()));
            pod["status"] = json!({ "phase": "Pending" });
            shared.pods.insert(key, pod.clone());
            answer(201, &pod)
        }
        (&Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match shared.pods.get(&(ns.to_string(), name.to_string())) {
                Some(pod) => answer(200, pod),
                None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
            }
        }
        (&Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match shared.pods.remove(&(ns.to_string(), name.to_string())) {
                Some(pod) => answer(200, &pod),
                None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
            }
        }
        _ => status(
            404,
            "NotFound",
            &format!("the fake API server does not serve {} {path}", parts.method),
        ),
    };
    Ok(response)
}
