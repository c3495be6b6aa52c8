//! The API client the CLI commands (and a CNI plugin, when a daemon runs) use.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::ErrorBody;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Client {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// One request on a fresh connection.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            Error::Api(format!(
                "cannot reach netd at {}: {e} — is `netd run` running? (set --socket or WEFT_SOCKET)",
                self.socket.display()
            ))
        })?;
        let broken = |e: hyper::Error| {
            Error::Api(format!("talking to netd at {}: {e}", self.socket.display()))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(broken)?;
        tokio::spawn(connection);
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).expect("requests serialize")),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "netd")
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .expect("valid request");
        let response = sender.send_request(request).await.map_err(broken)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(broken)?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(Error::Api(message));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::Api(format!(
                "netd answered {path} with something unreadable: {e}"
            ))
        })
    }
}
