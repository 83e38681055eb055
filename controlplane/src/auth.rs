//! Bearer-token authentication with roles, as a tower layer in front of every gRPC service.
//!
//! Tokens come from a file of `role:token` lines (`admin:…`, `read-only:…`, `dataplane:…`;
//! `#` comments), where the token may be given as its SHA-256 instead (`admin:sha256:HEX`), so
//! the file need not hold a secret. A read-only token may call the Get, List, Watch, Explain
//! and ListHealth methods, the health service and reflection; a dataplane token what a following
//! node needs — GetSnapshot, Watch and the health service — and nothing else; everything else
//! needs admin. A presented token is hashed and compared with every configured digest in
//! constant time. [`TokenFile`] re-reads the file when it changes or on SIGHUP, keeping the
//! previous tokens when the new file does not parse. With no token file every call is allowed —
//! the binary only permits that on loopback.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use crate::files::Stamp;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only.
    ReadOnly,
    /// What a data plane following the API needs: the snapshot and the Watch stream.
    Dataplane,
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
    #[error(
        "{path}:{line}: expected ROLE:TOKEN or ROLE:sha256:HEX, ROLE one of admin, read-only, dataplane (tokens of 16+ printable characters; 64 hex digits)"
    )]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// The file holds no token: it would lock everyone out (or, read as "no tokens", let
    /// everyone in).
    #[error("{path}: holds no token")]
    Empty {
        /// The file.
        path: String,
    },
}

/// The configured tokens, as SHA-256 digests.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
}

fn digest(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The digest of the bearer token in an `authorization` header value, if it holds one.
fn presented(authorization: Option<&str>) -> Option<[u8; 32]> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim()))
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// No tokens: every call allowed.
    pub fn none() -> Tokens {
        Tokens::default()
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest of every configured token, whatever its role (the admin listener's).
    pub fn digests(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.entries.iter().map(|(d, _)| *d)
    }

    /// Parses a token file's text.
    pub fn parse(path: &str, text: &str) -> Result<Tokens, TokensError> {
        let mut entries = Vec::new();
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
                "dataplane" => Role::Dataplane,
                _ => return Err(syntax()),
            };
            let token = token.trim();
            let d = match token.strip_prefix("sha256:") {
                Some(hex) => parse_hex(hex).ok_or_else(syntax)?,
                None if token.len() >= 16 && token.bytes().all(|c| c.is_ascii_graphic()) => {
                    digest(token)
                }
                None => return Err(syntax()),
            };
            entries.push((d, role));
        }
        Ok(Tokens { entries })
    }

    /// Reads a token file; one without any token is refused.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: p.clone(),
            source,
        })?;
        warn_if_readable(path);
        let tokens = Tokens::parse(&p, &text)?;
        if tokens.is_empty() {
            return Err(TokensError::Empty { path: p });
        }
        Ok(tokens)
    }

    /// The role of a presented token's digest. Every digest is compared, in constant time,
    /// whatever matches: the time taken says nothing of which token (or how much of one) was
    /// right.
    fn role(&self, d: &[u8; 32]) -> Option<Role> {
        let mut found = None;
        for (e, role) in &self.entries {
            if bool::from(e.ct_eq(d)) {
                found = Some(*role);
            }
        }
        found
    }

    /// Checks a call to gRPC `path` with this `authorization` header value.
    pub fn check(&self, path: &str, authorization: Option<&str>) -> Result<(), Status> {
        self.check_presented(path, presented(authorization))
            .map(|_| ())
    }

    /// [`Tokens::check`] with the digest of the bearer token presented, if any: the token's
    /// role (`None` when no tokens are configured).
    fn check_presented(
        &self,
        path: &str,
        presented: Option<[u8; 32]>,
    ) -> Result<Option<Role>, Status> {
        if self.is_empty() {
            return Ok(None);
        }
        let d = presented.ok_or_else(|| {
            Status::unauthenticated("missing bearer token (authorization: Bearer TOKEN)")
        })?;
        let role = self
            .role(&d)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        let allowed = match role {
            Role::Admin => true,
            Role::ReadOnly => is_read(path),
            Role::Dataplane => is_follow(path),
        };
        if allowed {
            Ok(Some(role))
        } else {
            Err(Status::permission_denied(format!(
                "{path} needs an admin token; this one is {}",
                match role {
                    Role::ReadOnly => "read-only",
                    _ => "a dataplane token (GetSnapshot and Watch only)",
                }
            )))
        }
    }
}

/// Warns when a token file can be read by others than its owner.
#[cfg(unix)]
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o044 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "the token file is readable by its group or by everyone: chmod 600 it, or store sha256: digests instead of tokens"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable(_: &Path) {}

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

/// Whether a gRPC method is one a following data plane calls.
fn is_follow(path: &str) -> bool {
    path.starts_with("/grpc.health.")
        || path == "/tether.v1.Tether/GetSnapshot"
        || path == "/tether.v1.Tether/Watch"
}

/// The tokens in force, re-read from their file when it changes.
#[derive(Debug)]
pub struct TokenFile {
    path: Option<PathBuf>,
    stamp: Mutex<Option<Stamp>>,
    current: ArcSwap<Tokens>,
}

/// How often the token file is looked at for changes.
const TOKEN_POLL: Duration = Duration::from_secs(1);

impl TokenFile {
    /// No file: every call allowed.
    pub fn none() -> Arc<TokenFile> {
        Arc::new(TokenFile {
            path: None,
            stamp: Mutex::new(None),
            current: ArcSwap::from_pointee(Tokens::none()),
        })
    }

    /// The tokens of `path`, loaded now (errors are the caller's to report).
    pub fn load(path: &Path) -> Result<Arc<TokenFile>, TokensError> {
        let stamp = Stamp::of([path]);
        let tokens = Tokens::load(path)?;
        Ok(Arc::new(TokenFile {
            path: Some(path.to_owned()),
            stamp: Mutex::new(Some(stamp)),
            current: ArcSwap::from_pointee(tokens),
        }))
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.current.load_full()
    }

    /// Re-reads the file if it changed (or always, when `force`). A file that no longer parses
    /// or holds no token keeps the previous tokens and says why.
    pub fn reload(&self, force: bool) {
        let Some(path) = &self.path else { return };
        let stamp = Stamp::of([path.as_path()]);
        let mut last = self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !force && last.as_ref() == Some(&stamp) {
            return;
        }
        *last = Some(stamp);
        match Tokens::load(path) {
            Ok(t) => {
                tracing::info!(file = %path.display(), tokens = t.entries.len(), "token file reloaded");
                self.current.store(Arc::new(t));
            }
            Err(e) => {
                tracing::error!(error = %e, "token file not reloaded; the previous tokens stay in force");
            }
        }
    }

    /// Re-reads the file when it changes (polled each second) or on SIGHUP, until `shutdown`.
    pub async fn follow(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        self.follow_with(shutdown, |_| {}).await;
    }

    /// [`TokenFile::follow`], calling `reloaded` with the tokens after each reload that took.
    pub async fn follow_with(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
        reloaded: impl Fn(&Tokens),
    ) {
        if self.path.is_none() {
            return;
        }
        tokio::pin!(shutdown);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let before = self.tokens();
            tokio::select! {
                () = tokio::time::sleep(TOKEN_POLL) => self.reload(false),
                () = hangup => self.reload(true),
                () = &mut shutdown => return,
            }
            let after = self.tokens();
            if !Arc::ptr_eq(&before, &after) {
                reloaded(&after);
            }
        }
    }
}

/// Who made a call: the SHA-256 of its bearer token, if it sent one (for per-token limits),
/// and whether it is a data-plane node — a `dataplane` token, or, where no tokens are
/// configured, a call carrying the [`NODE_HEADER`] that `tether dataplane --controlplane`
/// sends — to which reads return certificates' private keys. Put into each admitted request's
/// extensions.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<[u8; 32]>, pub bool);

/// The header a node sends on its calls (see [`Caller`]).
pub const NODE_HEADER: &str = "tether-node";

/// The layer.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    tokens: Arc<TokenFile>,
}

impl AuthLayer {
    /// Checks every call against the tokens in force in `tokens`.
    pub fn new(tokens: Arc<TokenFile>) -> AuthLayer {
        AuthLayer { tokens }
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
    tokens: Arc<TokenFile>,
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

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // Hashed once: checked against the tokens, then kept for per-token limits.
        let token = presented(auth);
        match self
            .tokens
            .tokens()
            .check_presented(req.uri().path(), token)
        {
            Ok(role) => {
                let node = match role {
                    Some(r) => r == Role::Dataplane,
                    None => req.headers().contains_key(NODE_HEADER),
                };
                req.extensions_mut().insert(Caller(token, node));
                Box::pin(self.inner.call(req))
            }
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

    fn code(r: Result<(), Status>) -> Option<tonic::Code> {
        r.err().map(|s| s.code())
    }

    #[test]
    fn hashed_tokens_and_the_dataplane_role() {
        let hex: String = digest("dddddddddddddddddddd")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let t = Tokens::parse(
            "t",
            &format!(
                "dataplane:sha256:{hex}\nadmin:sha256:{}\n",
                hex.to_uppercase()
            ),
        )
        .unwrap();
        let dp = Some("Bearer dddddddddddddddddddd");
        // The same digest under two roles: the last line wins, as for raw tokens.
        assert_eq!(t.role(&digest("dddddddddddddddddddd")), Some(Role::Admin));
        let t = Tokens::parse("t", &format!("dataplane:sha256:{hex}\n")).unwrap();
        assert_eq!(code(t.check("/tether.v1.Tether/GetSnapshot", dp)), None);
        assert_eq!(code(t.check("/tether.v1.Tether/Watch", dp)), None);
        assert_eq!(code(t.check("/grpc.health.v1.Health/Check", dp)), None);
        for denied in [
            "/tether.v1.Tether/ListBackends",
            "/tether.v1.Tether/Explain",
            "/tether.v1.Tether/CreateBackend",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(
                code(t.check(denied, dp)),
                Some(tonic::Code::PermissionDenied),
                "{denied}"
            );
        }
        // The digest itself is not a token.
        assert_eq!(
            code(t.check("/tether.v1.Tether/Watch", Some(&format!("Bearer {hex}")))),
            Some(tonic::Code::Unauthenticated)
        );
        for bad in [
            "admin:sha256:abc",
            "admin:sha256:",
            &format!("admin:sha256:{hex}00"),
        ] {
            assert!(Tokens::parse("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_file_is_reread_and_a_broken_one_keeps_the_previous_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "admin:aaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let file = TokenFile::load(&path).unwrap();
        let w = "/tether.v1.Tether/CreateBackend";
        let a = Some("Bearer aaaaaaaaaaaaaaaaaaaa");
        let b = Some("Bearer bbbbbbbbbbbbbbbbbbbb");
        assert_eq!(code(file.tokens().check(w, a)), None);
        std::fs::write(&path, "admin:bbbbbbbbbbbbbbbbbbbb\n").unwrap();
        file.reload(true);
        assert_eq!(code(file.tokens().check(w, b)), None);
        assert_eq!(
            code(file.tokens().check(w, a)),
            Some(tonic::Code::Unauthenticated)
        );
        for broken in ["admin:short\n", "# nothing\n"] {
            std::fs::write(&path, broken).unwrap();
            file.reload(true);
            assert_eq!(code(file.tokens().check(w, b)), None, "{broken:?}");
        }
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            TokenFile::load(&path).unwrap_err(),
            TokensError::Empty { .. }
        ));
    }
}
