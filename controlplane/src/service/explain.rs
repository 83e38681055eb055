//! Explain (which backend a route or director picks for a key, with its alternates) and the
//! keys-moved report of an Apply (the share of sampled keys a change sends elsewhere).

use tether_dataplane::config::{AdminHealth, Config};
use tether_dataplane::director::{BackendId, Directors, HealthView, Key, SelectOpts};
use tether_dataplane::snapshot::{self, ExplainError, ExplainTarget};
use tether_proto::v1;

use super::Api;
use super::write::Built;
use crate::convert;
use crate::error::ApiError;
use crate::store::Store;

/// Most alternates Explain lists (ordering them costs up to alternates × members on
/// random and hash directors).
pub const MAX_ALTERNATES: u32 = 100;

/// Longest Explain key, in bytes (a request line is at most 8 KiB by default).
pub const MAX_KEY_BYTES: usize = 8192;

/// Keys sampled per shard director to report the share a change moves.
const MOVED_SAMPLE: u32 = 10_000;

impl<S: Store> Api<S> {
    pub(super) async fn explain(
        &self,
        req: v1::ExplainRequest,
    ) -> Result<v1::ExplainResponse, ApiError> {
        if req.alternates > MAX_ALTERNATES {
            return Err(ApiError::Field(convert::FieldError::invalid(
                "alternates",
                format!(
                    "at most {MAX_ALTERNATES} alternates, got {}",
                    req.alternates
                ),
            )));
        }
        if req.key.len() > MAX_KEY_BYTES {
            return Err(ApiError::Field(convert::FieldError::invalid(
                "key",
                format!("is {} bytes long; at most {MAX_KEY_BYTES}", req.key.len()),
            )));
        }
        let n = if req.alternates == 0 {
            3
        } else {
            req.alternates as usize
        };
        let target = match &req.target {
            Some(v1::explain_request::Target::Route(r)) => ExplainTarget::Route(r),
            Some(v1::explain_request::Target::Director(d)) => ExplainTarget::Director(d),
            None => return Err(ApiError::Required("target")),
        };
        let not_found = |e: ExplainError| match e {
            ExplainError::NoRoute(name) => ApiError::NotFound {
                kind: "route",
                name,
            },
            ExplainError::NoDirector(name) => ApiError::NotFound {
                kind: "director",
                name,
            },
            ExplainError::Key(k) => ApiError::Field(convert::FieldError::invalid("key", k)),
        };
        let (e, revision) = match &self.live {
            Some(rt) => {
                let snap = rt.snapshot();
                (
                    snap.explain(target, &req.key, n).map_err(not_found)?,
                    snap.revision,
                )
            }
            None => {
                let current = self.current().await?;
                let v = &current.validated;
                let health = AdminOnly(&v.config);
                (
                    snapshot::explain(&v.config, &v.directors, &health, target, &req.key, n)
                        .map_err(not_found)?,
                    current.revision,
                )
            }
        };
        Ok(v1::ExplainResponse {
            director: e.director,
            backend: e.backend.unwrap_or_default(),
            alternates: e.alternates,
            revision,
        })
    }
}

/// Health from the stored admin state only (no data plane in this process).
struct AdminOnly<'a>(&'a Config);

impl HealthView for AdminOnly<'_> {
    fn is_healthy(&self, b: BackendId) -> bool {
        let spec = &self.0.backends[b as usize];
        !spec.drain && spec.admin_health != AdminHealth::Sick
    }
}

struct AllHealthy;

impl HealthView for AllHealthy {
    fn is_healthy(&self, _: BackendId) -> bool {
        true
    }
}

/// For each shard director in both states whose configuration changed, the share of sampled
/// keys whose backend differs (all backends taken as healthy).
pub(super) fn keys_moved(
    a_config: &Config,
    a_directors: &Directors,
    b: &Built,
) -> Vec<v1::KeysMoved> {
    let mut out = Vec::new();
    for d in &b.config.directors {
        if !matches!(d.policy, tether_dataplane::config::Policy::Shard(_)) {
            continue;
        }
        let (Some(da), Some(db)) = (a_directors.id(&d.name), b.directors.id(&d.name)) else {
            continue;
        };
        let before = a_config.directors.iter().find(|x| x.name == d.name);
        let backends_same = a_config.backends.iter().map(|x| &x.name).eq(b
            .config
            .backends
            .iter()
            .map(|x| &x.name));
        if before == Some(d) && backends_same {
            continue;
        }
        let pick = |dirs: &Directors, id, k: &str| {
            dirs.select(id, &Key::str(k), SelectOpts::default(), &AllHealthy)
                .ok()
                .flatten()
                .map(|x| dirs.backend_name(x).to_owned())
        };
        let mut moved = 0u32;
        for i in 0..MOVED_SAMPLE {
            let k = format!("key-{i}");
            if pick(a_directors, da, &k) != pick(&b.directors, db, &k) {
                moved += 1;
            }
        }
        out.push(v1::KeysMoved {
            director: d.name.clone(),
            share: f64::from(moved) / f64::from(MOVED_SAMPLE),
            sampled_keys: MOVED_SAMPLE,
        });
    }
    out
}
