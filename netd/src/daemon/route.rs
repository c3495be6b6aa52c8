//! The API's request parser: method, path, query and body to the call they
//! ask for, or a refusal (`InvalidInput` or `NotFound`, answered 4xx with a
//! JSON error body). Pure, so that it can be fuzzed without a socket
//! (`route_fuzz_tests.rs`, corpus in netd/corpus/api/).

use hyper::Method;

use crate::endpoints::{AttachRequest, CheckExpected};
use crate::error::{Error, Result};
use crate::ports::{PortMapping, PortsRequest};

/// One API call, parsed.
#[derive(Debug)]
pub enum Call {
    Status,
    List,
    Attach(Box<AttachRequest>),
    Get(String),
    Check(String),
    /// CHECK with what the caller expects in the container (a CNI prevResult's).
    CheckExpecting {
        key: String,
        expected: CheckExpected,
    },
    /// `wait`: answer only once the links are deleted (`?wait=1`).
    Detach {
        key: String,
        wait: bool,
    },
    Publish {
        key: String,
        ports: Vec<PortMapping>,
    },
    Unpublish {
        key: String,
        ports: Vec<PortMapping>,
    },
    Reconcile,
    Names,
    Peers,
    Cluster(ClusterCall),
}

/// A call on the cluster part (`/v1/cluster/…`).
#[derive(Debug)]
pub enum ClusterCall {
    Status,
    Hosts,
    Leave,
    Forget(crate::cluster::ForgetRequest),
    RotateKey,
}

/// Parses one request. The body is looked at only by calls that take one.
pub fn route(method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Result<Call> {
    // `?wait=1` on DELETE: answer only once the veth pair is gone and the
    // addresses are released, not as soon as the container is cut off.
    let wait = query.is_some_and(|q| q.split('&').any(|kv| kv == "wait=1" || kv == "wait=true"));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let key = |k: &str| -> Result<String> {
        if k.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{method} {path}: the container id or name is empty"
            )));
        }
        Ok(k.to_string())
    };
    Ok(match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => Call::Status,
        (&Method::GET, ["v1", "containers"]) => Call::List,
        (&Method::POST, ["v1", "containers"]) => Call::Attach(Box::new(parse(body)?)),
        (&Method::GET, ["v1", "containers", k]) => Call::Get(key(k)?),
        (&Method::GET, ["v1", "containers", k, "check"]) => Call::Check(key(k)?),
        (&Method::POST, ["v1", "containers", k, "check"]) => Call::CheckExpecting {
            key: key(k)?,
            expected: parse(body)?,
        },
        (&Method::DELETE, ["v1", "containers", k]) => Call::Detach { key: key(k)?, wait },
        (&Method::POST, ["v1", "containers", k, "ports"]) => Call::Publish {
            key: key(k)?,
            ports: parse::<PortsRequest>(body)?.ports,
        },
        (&Method::DELETE, ["v1", "containers", k, "ports"]) => Call::Unpublish {
            key: key(k)?,
            ports: parse::<PortsRequest>(body)?.ports,
        },
        (&Method::POST, ["v1", "reconcile"]) => Call::Reconcile,
        (&Method::GET, ["v1", "names"]) => Call::Names,
        (&Method::GET, ["v1", "peers"]) => Call::Peers,
        (&Method::GET, ["v1", "cluster", "status"]) => Call::Cluster(ClusterCall::Status),
        (&Method::GET, ["v1", "cluster", "hosts"]) => Call::Cluster(ClusterCall::Hosts),
        (&Method::POST, ["v1", "cluster", "leave"]) => Call::Cluster(ClusterCall::Leave),
        (&Method::POST, ["v1", "cluster", "rotate-key"]) => Call::Cluster(ClusterCall::RotateKey),
        (&Method::POST, ["v1", "cluster", "forget"]) => {
            Call::Cluster(ClusterCall::Forget(parse(body)?))
        }
        _ => {
            return Err(Error::NotFound(format!(
                "no such API call: {method} {path}"
            )))
        }
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidInput(format!("bad request body: {e}")))
}
