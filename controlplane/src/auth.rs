//! Bearer-token authentication with roles, as a tower layer in front of every gRPC service.
//!
//! Tokens come from a file of `role:token` lines (`admin:…`, `read-only:…`; `#` comments).
//! A read-only token may call the Get, List, Watch, Explain and ListHealth methods, the health
//! service and reflection; everything else needs admin. With no tokens configured every call
//! is allowed — `tether up` only permits that on loopback (see the binary).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only.
    ReadOnly,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `role:token`.
    #[error("{path}:{line}: expected admin:TOKEN or read-only:TOKEN (tokens of 16+ characters)")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, Role>,
}

impl Tokens {
    /// No tokens: every call allowed.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Every configured token, whatever its role.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.by_token.keys().map(String::as_str)
    }

    /// Parses a token file's text.
    pub fn parse(path: &str, text: &str) -> Result<Tokens, TokensError> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || TokensError::Syntax {
                path: path.to_owned(),
                line: i + 1,
            };
            let (role, token) = line.split_once(':').ok_or_else(syntax)?;
            let role = match role.trim() {
                "admin" => Role::Admin,
                "read-only" => Role::ReadOnly,
                _ => return Err(syntax()),
            };
            let token = token.trim();
            if token.len() < 16 || !token.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(syntax());
            }
            by_token.insert(token.to_owned(), role);
        }
        Ok(Tokens { by_token })
    }

    /// Reads a token file.
    pub fn load(path: &std::path::Path) -> Result<Tokens, TokensError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: p.clone(),
            source,
        })?;
        Tokens::parse(&p, &text)
    }

    /// Checks a call to gRPC `path` with this `authorization` header value.
    pub fn check(&self, path: &str, authorization: Option<&str>) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer TOKEN)")
            })?;
        let role = self
            .by_token
            .get(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        match role {
            Role::Admin => Ok(()),
            Role::ReadOnly if is_read(path) => Ok(()),
            Role::ReadOnly => Err(Status::permission_denied(format!(
                "{path} needs an admin token; this one is read-only"
            ))),
        }
    }
}

/// Whether a gRPC method only reads.
fn is_read(path: &str) -> bool {
    if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
        return true;
    }
    let method = path.rsplit('/').next().unwrap_or("");
    ["Get", "List", "Watch", "Explain"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// The layer.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Arc<Tokens>,
}

impl AuthLayer {
    /// Checks every call against `tokens`.
    pub fn new(tokens: Tokens) -> AuthLayer {
        AuthLayer {
            tokens: Arc::new(tokens),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            tokens: Arc::clone(&self.tokens),
        }
    }
}

/// The service the layer wraps around each gRPC service.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.tokens.check(req.uri().path(), auth) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let t = Tokens::parse(
            "t",
            "# comment\nadmin:aaaaaaaaaaaaaaaaaaaa\nread-only: rrrrrrrrrrrrrrrrrrrr\n",
        )
        .unwrap();
        let w = "/tether.v1.Tether/CreateBackend";
        let r = "/tether.v1.Tether/ListBackends";
        assert!(t.check(w, Some("Bearer aaaaaaaaaaaaaaaaaaaa")).is_ok());
        assert!(t.check(r, Some("Bearer rrrrrrrrrrrrrrrrrrrr")).is_ok());
        assert_eq!(
            t.check(w, Some("Bearer rrrrrrrrrrrrrrrrrrrr"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            t.check(r, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            t.check(r, Some("Bearer nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(Tokens::none().check(w, None).is_ok());
        assert!(Tokens::parse("t", "root:aaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(Tokens::parse("t", "admin:short").is_err());
    }
}
