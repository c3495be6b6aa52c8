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
use crate::error::{Error, ErrorKind, Result};

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
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| Error::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let broken = |e: hyper::Error| {
            Error::Protocol(format!("talking to netd at {}: {e}", self.socket.display()))
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
            return Err(error_answer(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| {
            Error::Protocol(format!(
                "netd answered {path} with something unreadable: {e}"
            ))
        })
    }
}

/// An error answer as an [`Error`] of the kind its body names.
fn error_answer(status: hyper::StatusCode, body: &[u8]) -> Error {
    let (message, kind) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error, b.kind),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None),
    };
    Error::Remote {
        kind: kind.unwrap_or_else(|| kind_of_status(status)),
        message,
    }
}

/// The kind an error answer without one stands for, by its status.
fn kind_of_status(status: hyper::StatusCode) -> ErrorKind {
    match status.as_u16() {
        400 => ErrorKind::InvalidInput,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_keep_the_kind_their_body_names() {
        let body = serde_json::to_vec(&ErrorBody::new(
            ErrorKind::Busy,
            "container c1 is being attached right now".into(),
        ))
        .unwrap();
        let e = error_answer(hyper::StatusCode::CONFLICT, &body);
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(e.to_string(), "container c1 is being attached right now");
        // An answer without a kind (an older netd, a proxy) goes by its status.
        let e = error_answer(hyper::StatusCode::NOT_FOUND, br#"{"error": "gone"}"#);
        assert_eq!(
            (e.kind(), e.to_string()),
            (ErrorKind::NotFound, "gone".into())
        );
        let e = error_answer(hyper::StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(e.kind(), ErrorKind::Internal);
    }
}
