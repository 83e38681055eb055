//! The control-plane side of node registration: the agreement check behind `ListNodes` and
//! `tether nodes`. (A node's own registration loop is [`crate::node::register`].)

use std::collections::HashMap;

use tether_proto::v1;

/// Whether all nodes agree, and the fingerprint most of them have.
pub fn agreement(nodes: &[v1::Node]) -> (bool, String) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in nodes {
        *counts.entry(n.fingerprint.as_str()).or_default() += 1;
    }
    let majority = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(f, _)| (*f).to_owned())
        .unwrap_or_default();
    (counts.len() <= 1, majority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, f: &str) -> v1::Node {
        v1::Node {
            id: id.into(),
            fingerprint: f.into(),
            ..Default::default()
        }
    }

    #[test]
    fn agreement_and_majority() {
        assert_eq!(agreement(&[]), (true, String::new()));
        assert_eq!(
            agreement(&[node("a", "x"), node("b", "x")]),
            (true, "x".into())
        );
        assert_eq!(
            agreement(&[node("a", "x"), node("b", "y"), node("c", "x")]),
            (false, "x".into())
        );
    }
}
