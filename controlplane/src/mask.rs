//! Update masks (AIP-134): an Update that names the fields it changes, so an orchestration
//! tool sets one backend's `weight` or one label without a read-modify-write.
//!
//! The merge is generic over every resource kind through the messages' descriptors
//! (prost-reflect over the descriptor set the build already embeds for reflection), rather
//! than hand-written per kind: a field added to a resource is maskable without code here.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage};

use crate::convert::FieldError;
use crate::state::Resource;

/// Most paths one mask may name (every resource has fewer fields than this).
pub const MAX_PATHS: usize = 64;
/// Longest path (a label key is at most 63 + a prefix; fields are short).
const MAX_PATH_BYTES: usize = 320;

/// Fields a mask may not name: the resource's identity and what the store sets.
const NOT_MASKABLE: &[&str] = &["name", "revision"];

/// tether.v1's descriptors, decoded once. `None` only if the embedded set does not decode,
/// which the build's own test rules out; an Update with a mask then fails cleanly.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(tether_proto::FILE_DESCRIPTOR_SET).ok());

/// `stored` with the fields `paths` names taken from `given` (a path `given` leaves unset
/// clears the field). `None`: the mask is empty or `*`, meaning replace the whole resource.
pub fn merge<R: Resource>(
    stored: &R,
    given: &R,
    paths: &[String],
) -> Result<Option<R>, FieldError> {
    if paths.is_empty() || paths == ["*"] {
        return Ok(None);
    }
    if paths.len() > MAX_PATHS {
        return Err(FieldError::invalid(
            "update_mask.paths",
            format!("at most {MAX_PATHS} paths, got {}", paths.len()),
        ));
    }
    let desc = descriptor::<R>()?;
    let decode = |r: &R| {
        DynamicMessage::decode(desc.clone(), r.encode_to_vec().as_slice())
            .map_err(|e| FieldError::invalid("update_mask", format!("cannot merge: {e}")))
    };
    let mut out = decode(stored)?;
    let src = decode(given)?;
    for (i, path) in paths.iter().enumerate() {
        let at = format!("update_mask.paths[{i}]");
        if path.len() > MAX_PATH_BYTES {
            return Err(FieldError::invalid(
                at,
                format!("longer than {MAX_PATH_BYTES} bytes"),
            ));
        }
        let segments: Vec<&str> = path.split('.').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(FieldError::invalid(
                at,
                format!("{path:?} is not a field path"),
            ));
        }
        if NOT_MASKABLE.contains(&segments[0]) {
            return Err(FieldError::invalid(
                at,
                format!(
                    "{:?} cannot be updated through a mask (the name says which {}; the revision is the store's)",
                    segments[0],
                    R::FIELD
                ),
            ));
        }
        copy(&mut out, &src, &segments).map_err(|m| FieldError::invalid(at, m))?;
    }
    R::decode(out.encode_to_vec().as_slice())
        .map(Some)
        .map_err(|e| FieldError::invalid("update_mask", format!("cannot merge: {e}")))
}

fn descriptor<R: Resource>() -> Result<MessageDescriptor, FieldError> {
    POOL.as_ref()
        .and_then(|p| p.get_message_by_name(R::MESSAGE))
        .ok_or_else(|| {
            FieldError::invalid("update_mask", format!("no descriptor for {}", R::MESSAGE))
        })
}

/// Copies the field at `path` from `src` into `dst`, descending into messages and, for a map
/// with string keys, into one entry (`labels.zone`).
fn copy(dst: &mut DynamicMessage, src: &DynamicMessage, path: &[&str]) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("empty path".into());
    };
    let message = dst.descriptor();
    let field = message
        .get_field_by_name(first)
        .ok_or_else(|| format!("{} has no field {first:?}", message.name()))?;
    if rest.is_empty() {
        if src.has_field(&field) {
            dst.set_field(&field, src.get_field(&field).into_owned());
        } else {
            dst.clear_field(&field);
        }
        return Ok(());
    }
    if field.is_map() {
        let [key] = rest else {
            return Err(format!("{first:?} is a map: name one key, as {first}.KEY"));
        };
        let key = MapKey::String((*key).to_owned());
        let value = src
            .get_field(&field)
            .as_map()
            .and_then(|m| m.get(&key).cloned());
        if let Some(map) = dst.get_field_mut(&field).as_map_mut() {
            match value {
                Some(v) => {
                    map.insert(key, v);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        return Ok(());
    }
    if field.is_list() || field.kind().as_message().is_none() {
        return Err(format!("{first:?} has no fields of its own"));
    }
    let sub_src = match src.get_field(&field).as_message() {
        Some(m) => m.clone(),
        None => return Err(format!("{first:?} is not a message")),
    };
    match dst.get_field_mut(&field).as_message_mut() {
        Some(sub_dst) => copy(sub_dst, &sub_src, rest),
        None => Err(format!("{first:?} is not a message")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use tether_proto::v1;

    use super::merge;

    fn backend() -> v1::Backend {
        v1::Backend {
            name: "b1".into(),
            address: "127.0.0.1:8080".into(),
            weight: Some(2.0),
            probe: "p".into(),
            labels: HashMap::from([("app".into(), "web".into()), ("zone".into(), "a".into())]),
            revision: 7,
            ..Default::default()
        }
    }

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_the_named_fields_change() {
        let given = v1::Backend {
            name: "b1".into(),
            weight: Some(5.0),
            ..Default::default()
        };
        let m = merge(&backend(), &given, &paths(&["weight"]))
            .unwrap()
            .unwrap();
        assert_eq!(m.weight, Some(5.0));
        assert_eq!(m.address, "127.0.0.1:8080");
        assert_eq!(m.labels.len(), 2);
        assert_eq!(m.probe, "p");
    }

    #[test]
    fn a_named_field_left_unset_is_cleared() {
        let given = v1::Backend::default();
        let m = merge(&backend(), &given, &paths(&["weight", "probe"]))
            .unwrap()
            .unwrap();
        assert_eq!(m.weight, None);
        assert_eq!(m.probe, "");
    }

    #[test]
    fn one_map_entry_can_be_set_or_removed() {
        let given = v1::Backend {
            labels: HashMap::from([("zone".into(), "b".into())]),
            ..Default::default()
        };
        let m = merge(&backend(), &given, &paths(&["labels.zone", "labels.app"]))
            .unwrap()
            .unwrap();
        assert_eq!(m.labels, HashMap::from([("zone".into(), "b".into())]));
        let whole = merge(&backend(), &given, &paths(&["labels"]))
            .unwrap()
            .unwrap();
        assert_eq!(whole.labels, given.labels);
    }

    #[test]
    fn nested_message_fields() {
        let given = v1::Backend {
            tls: Some(v1::BackendTls {
                server_name: "x.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = merge(&backend(), &given, &paths(&["tls.server_name"]))
            .unwrap()
            .unwrap();
        assert_eq!(m.tls.unwrap().server_name, "x.example");
    }

    #[test]
    fn a_oneof_member_replaces_its_sibling() {
        let stored = v1::Director {
            name: "d".into(),
            policy: Some(v1::director::Policy::RoundRobin(v1::RoundRobin {})),
            ..Default::default()
        };
        let given = v1::Director {
            policy: Some(v1::director::Policy::Random(v1::Random {})),
            ..Default::default()
        };
        let m = merge(&stored, &given, &paths(&["random"]))
            .unwrap()
            .unwrap();
        assert_eq!(m.policy, given.policy);
    }

    #[test]
    fn empty_or_star_replaces_everything() {
        let given = v1::Backend::default();
        assert!(merge(&backend(), &given, &[]).unwrap().is_none());
        assert!(merge(&backend(), &given, &paths(&["*"])).unwrap().is_none());
    }

    #[test]
    fn bad_paths_name_the_path() {
        let given = v1::Backend::default();
        for (p, field, says) in [
            (
                vec!["weight", "nope"],
                "update_mask.paths[1]",
                "no field \"nope\"",
            ),
            (vec!["name"], "update_mask.paths[0]", "cannot be updated"),
            (
                vec!["revision"],
                "update_mask.paths[0]",
                "cannot be updated",
            ),
            (
                vec!["weight.x"],
                "update_mask.paths[0]",
                "no fields of its own",
            ),
            (vec!["labels.a.b"], "update_mask.paths[0]", "name one key"),
            (vec!["tls..ca"], "update_mask.paths[0]", "not a field path"),
        ] {
            let e = merge(&backend(), &given, &paths(&p)).unwrap_err();
            assert_eq!(e.field, field, "{p:?}");
            assert!(e.message.contains(says), "{p:?}: {}", e.message);
        }
        let many: Vec<String> = (0..65).map(|_| "weight".to_owned()).collect();
        assert_eq!(
            merge(&backend(), &given, &many).unwrap_err().field,
            "update_mask.paths"
        );
    }
}
