//! Label selectors: a director member that stands for every backend whose labels match
//! (Kubernetes' LabelSelector semantics), and kubectl's text form of one
//! (`app=web,zone in (a,b),tier,!legacy`) for declarative files and `tether … list -l`.
//!
//! [`Selector::from_proto`] checks a selector from the API once; [`Selector::matches`] is what
//! [`crate::convert`] runs over the stored backends, in name order, when it expands a director,
//! so every node computes the same members from the same revision.

use std::collections::HashMap;

use tether_dataplane::limits;
use tether_proto::v1;
use tether_proto::v1::label_requirement::Operator;

use crate::convert::FieldError;

/// Most requirements in one selector.
pub const MAX_REQUIREMENTS: usize = 32;
/// Most values of one `in` / `notin` requirement.
pub const MAX_VALUES: usize = 64;
/// Longest text form accepted.
pub const MAX_TEXT_BYTES: usize = 4096;

/// A checked selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// Checks `s`; errors name the field under `at` (`directors[0].members[1].selector`).
    pub fn from_proto(s: &v1::LabelSelector, at: &str) -> Result<Selector, FieldError> {
        let count = s.match_labels.len() + s.match_expressions.len();
        if count == 0 {
            return Err(FieldError::invalid(
                at,
                "is empty, which would match every backend: give at least one label",
            ));
        }
        if count > MAX_REQUIREMENTS {
            return Err(FieldError::invalid(
                at,
                format!("has {count} requirements; at most {MAX_REQUIREMENTS}"),
            ));
        }
        let mut requirements = Vec::with_capacity(count);
        let mut labels: Vec<_> = s.match_labels.iter().collect();
        labels.sort();
        for (k, v) in labels {
            let field = format!("{at}.match_labels[{k:?}]");
            key(k).map_err(|m| FieldError::invalid(&field, m))?;
            value(v).map_err(|m| FieldError::invalid(&field, m))?;
            requirements.push(Requirement {
                key: k.clone(),
                test: Test::In(vec![v.clone()]),
            });
        }
        for (i, e) in s.match_expressions.iter().enumerate() {
            let field = |f: &str| format!("{at}.match_expressions[{i}].{f}");
            key(&e.key).map_err(|m| FieldError::invalid(field("key"), m))?;
            if e.values.len() > MAX_VALUES {
                return Err(FieldError::invalid(
                    field("values"),
                    format!("has {} values; at most {MAX_VALUES}", e.values.len()),
                ));
            }
            for v in &e.values {
                value(v).map_err(|m| FieldError::invalid(field("values"), m))?;
            }
            let test = match Operator::try_from(e.operator) {
                Ok(Operator::In | Operator::NotIn) if e.values.is_empty() => {
                    return Err(FieldError::invalid(
                        field("values"),
                        "in and notin need at least one value",
                    ));
                }
                Ok(Operator::Exists | Operator::DoesNotExist) if !e.values.is_empty() => {
                    return Err(FieldError::invalid(
                        field("values"),
                        "exists and does-not-exist take no values",
                    ));
                }
                Ok(Operator::In) => Test::In(e.values.clone()),
                Ok(Operator::NotIn) => Test::NotIn(e.values.clone()),
                Ok(Operator::Exists) => Test::Exists,
                Ok(Operator::DoesNotExist) => Test::DoesNotExist,
                Ok(Operator::Unspecified) | Err(_) => {
                    return Err(FieldError::invalid(
                        field("operator"),
                        "one of OPERATOR_IN, OPERATOR_NOT_IN, OPERATOR_EXISTS, OPERATOR_DOES_NOT_EXIST",
                    ));
                }
            };
            requirements.push(Requirement {
                key: e.key.clone(),
                test,
            });
        }
        Ok(Selector { requirements })
    }

    /// Whether a backend with these labels is selected.
    pub fn matches(&self, labels: &HashMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = label(labels, &r.key);
            match &r.test {
                Test::In(values) => v.is_some_and(|v| values.contains(v)),
                Test::NotIn(values) => v.is_none_or(|v| !values.contains(v)),
                Test::Exists => v.is_some(),
                Test::DoesNotExist => v.is_none(),
            }
        })
    }
}

/// A label's value. A backend has a few labels: comparing keys beats hashing one with the
/// map's SipHash (this runs once per backend per selector when a director is expanded).
fn label<'l>(labels: &'l HashMap<String, String>, key: &str) -> Option<&'l String> {
    if labels.len() <= 8 {
        labels.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        labels.get(key)
    }
}

fn key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > limits::MAX_LABEL_KEY_BYTES {
        return Err(format!(
            "label key {k:?} must be 1-{} bytes",
            limits::MAX_LABEL_KEY_BYTES
        ));
    }
    if !k.chars().all(is_key_char) {
        return Err(format!("label key {k:?}: letters, digits and - _ . / only"));
    }
    Ok(())
}

fn value(v: &str) -> Result<(), String> {
    if v.len() > limits::MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "label value longer than {} bytes",
            limits::MAX_LABEL_VALUE_BYTES
        ));
    }
    Ok(())
}

/// Characters of a label key in the text form (and of an unquoted value).
pub(crate) fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// Parses kubectl's selector syntax: requirements separated by commas, each `key=value`
/// (or `==`), `key!=value`, `key in (v1,v2)`, `key notin (v1,v2)`, `key` (exists) or `!key`
/// (does not exist). Equalities become `match_labels`, the rest `match_expressions`.
pub fn parse(text: &str) -> Result<v1::LabelSelector, String> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("longer than {MAX_TEXT_BYTES} bytes"));
    }
    let mut out = v1::LabelSelector::default();
    for part in split_top_level(text) {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("{text:?}: an empty requirement"));
        }
        let bad_key = |k: &str| -> Result<String, String> {
            let k = k.trim();
            key(k).map_err(|m| format!("{part:?}: {m}"))?;
            Ok(k.to_owned())
        };
        let expr = |key: String, op: Operator, values: Vec<String>| v1::LabelRequirement {
            key,
            operator: op as i32,
            values,
        };
        if let Some(k) = part.strip_prefix('!') {
            out.match_expressions
                .push(expr(bad_key(k)?, Operator::DoesNotExist, vec![]));
        } else if let Some((k, v)) = part.split_once("!=") {
            out.match_expressions.push(expr(
                bad_key(k)?,
                Operator::NotIn,
                vec![v.trim().to_owned()],
            ));
        } else if let Some((k, v)) = part.split_once('=') {
            let v = v.strip_prefix('=').unwrap_or(v).trim();
            let k = bad_key(k)?;
            if out.match_labels.insert(k.clone(), v.to_owned()).is_some() {
                return Err(format!("{part:?}: {k:?} is given twice"));
            }
        } else if let Some((k, op, values)) = set_requirement(part) {
            let op = if op == "in" {
                Operator::In
            } else {
                Operator::NotIn
            };
            out.match_expressions.push(expr(bad_key(k)?, op, values));
        } else if part.contains(char::is_whitespace) || part.contains('(') {
            return Err(format!(
                "{part:?}: expected key=value, key!=value, key in (…), key notin (…), key or !key"
            ));
        } else {
            out.match_expressions
                .push(expr(bad_key(part)?, Operator::Exists, vec![]));
        }
    }
    Ok(out)
}

/// `key in (a, b)` / `key notin (a, b)`: the key, the operator and the values.
fn set_requirement(part: &str) -> Option<(&str, &str, Vec<String>)> {
    let open = part.find('(')?;
    let inner = part[open + 1..].strip_suffix(')')?;
    let head = part[..open].trim_end();
    let (k, op) = head.rsplit_once(char::is_whitespace)?;
    if op != "in" && op != "notin" {
        return None;
    }
    let values = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    Some((k, op, values))
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The text form of `s`, as [`parse`] takes it back: equalities in key order, then the
/// expressions in their order.
pub fn to_text(s: &v1::LabelSelector) -> String {
    let mut labels: Vec<_> = s.match_labels.iter().collect();
    labels.sort();
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for e in &s.match_expressions {
        parts.push(match Operator::try_from(e.operator) {
            Ok(Operator::In) => format!("{} in ({})", e.key, e.values.join(",")),
            Ok(Operator::NotIn) if e.values.len() == 1 => format!("{}!={}", e.key, e.values[0]),
            Ok(Operator::NotIn) => format!("{} notin ({})", e.key, e.values.join(",")),
            Ok(Operator::DoesNotExist) => format!("!{}", e.key),
            _ => e.key.clone(),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(text: &str) -> Selector {
        Selector::from_proto(&parse(text).unwrap(), "selector").unwrap()
    }

    #[test]
    fn matching_follows_kubernetes() {
        let web_a = labels(&[("app", "web"), ("zone", "a")]);
        let web_c = labels(&[("app", "web"), ("zone", "c"), ("legacy", "yes")]);
        let api = labels(&[("app", "api")]);
        let s = sel("app=web");
        assert!(s.matches(&web_a) && s.matches(&web_c) && !s.matches(&api));
        let s = sel("app=web,zone in (a, b)");
        assert!(s.matches(&web_a) && !s.matches(&web_c));
        let s = sel("zone notin (a)");
        assert!(!s.matches(&web_a) && s.matches(&web_c) && s.matches(&api));
        let s = sel("zone,!legacy");
        assert!(s.matches(&web_a) && !s.matches(&web_c) && !s.matches(&api));
        let s = sel("app!=web");
        assert!(!s.matches(&web_a) && s.matches(&api));
    }

    #[test]
    fn the_text_form_round_trips() {
        for text in [
            "app=web,zone=a",
            "app=web,zone in (a,b),tier,!legacy,x notin (1,2)",
        ] {
            assert_eq!(to_text(&parse(text).unwrap()), text);
        }
        assert_eq!(to_text(&parse("k == v , j!=w").unwrap()), "k=v,j!=w");
    }

    #[test]
    fn bad_selectors_are_refused_by_field() {
        assert!(parse("app=web,,zone=a").is_err());
        assert!(parse("app in a,b").is_err());
        assert!(parse("a b").is_err());
        assert!(parse("k=1,k=2").unwrap_err().contains("twice"));
        assert!(parse("sp ace=1").is_err());
        let e =
            Selector::from_proto(&v1::LabelSelector::default(), "members[0].selector").unwrap_err();
        assert_eq!(e.field, "members[0].selector");
        let s = v1::LabelSelector {
            match_expressions: vec![v1::LabelRequirement {
                key: "k".into(),
                operator: Operator::In as i32,
                values: vec![],
            }],
            ..Default::default()
        };
        let e = Selector::from_proto(&s, "sel").unwrap_err();
        assert_eq!(e.field, "sel.match_expressions[0].values");
        let many = (0..=MAX_REQUIREMENTS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Selector::from_proto(&parse(&many).unwrap(), "sel").is_err());
    }
}
