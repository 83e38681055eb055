//! List filters: the AIP-160 subset that label selection needs, parsed once per List call
//! and matched against each resource.
//!
//! ```text
//! filter  = term { "AND" term }
//! term    = "labels." KEY ( "=" value | "!=" value | ":" "*" )
//!         | "name" "=" value
//! value   = '"' chars '"' | bare      (bare: letters, digits, - _ . / @ +)
//! ```
//!
//! A hand-written parser: the grammar is four productions, and the AIP-160 crates on
//! crates.io implement the whole language (functions, OR, traversal of any field) that this
//! API would then have to define semantics for.

use std::collections::HashMap;

use crate::convert::FieldError;
use crate::selector::is_key_char;

/// Longest filter accepted.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Most comparisons in one filter.
pub const MAX_TERMS: usize = 32;

/// A parsed filter: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    LabelEq(String, String),
    LabelNe(String, String),
    LabelPresent(String),
    NameEq(String),
}

impl Filter {
    /// Parses `text` (empty: matches everything). Errors name the field `filter`.
    pub fn parse(text: &str) -> Result<Filter, FieldError> {
        let bad = |m: String| FieldError::invalid("filter", m);
        if text.len() > MAX_FILTER_BYTES {
            return Err(bad(format!("longer than {MAX_FILTER_BYTES} bytes")));
        }
        let mut p = Parser { s: text, at: 0 };
        let mut terms = Vec::new();
        p.space();
        if p.done() {
            return Ok(Filter { terms });
        }
        loop {
            terms.push(p.term().map_err(|m| bad(format!("{m} at byte {}", p.at)))?);
            if terms.len() > MAX_TERMS {
                return Err(bad(format!("at most {MAX_TERMS} comparisons")));
            }
            p.space();
            if p.done() {
                return Ok(Filter { terms });
            }
            if !p.keyword("AND") {
                return Err(bad(format!(
                    "expected AND between comparisons at byte {} (OR, NOT and parentheses are not supported)",
                    p.at
                )));
            }
            p.space();
        }
    }

    /// Whether a resource with this name and these labels matches.
    pub fn matches(&self, name: &str, labels: Option<&HashMap<String, String>>) -> bool {
        let label = |k: &String| labels.and_then(|l| l.get(k));
        self.terms.iter().all(|t| match t {
            Term::LabelEq(k, v) => label(k) == Some(v),
            Term::LabelNe(k, v) => label(k) != Some(v),
            Term::LabelPresent(k) => label(k).is_some(),
            Term::NameEq(v) => name == v,
        })
    }

    /// Whether it matches everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The filter `tether … list -l` sends for its selector `k=v,k!=v,k` (kubectl's syntax,
    /// parsed by [`crate::selector::parse`]; the filter has no `in`, `notin` or `!k`).
    pub fn from_selector(selector: &str) -> Result<String, String> {
        use tether_proto::v1::label_requirement::Operator;
        let s = crate::selector::parse(selector)?;
        let mut labels: Vec<_> = s.match_labels.iter().collect();
        labels.sort();
        let mut out: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("labels.{k} = {}", quote(v)))
            .collect();
        for e in &s.match_expressions {
            out.push(match (Operator::try_from(e.operator), e.values.as_slice()) {
                (Ok(Operator::NotIn), [v]) => format!("labels.{} != {}", e.key, quote(v)),
                (Ok(Operator::Exists), []) => format!("labels.{}:*", e.key),
                _ => {
                    return Err(format!(
                        "{selector:?}: a list selector takes k=v, k!=v and k (not in, notin or !k)"
                    ));
                }
            });
        }
        Ok(out.join(" AND "))
    }
}

/// `v` as a filter string literal.
fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

fn is_bare_char(c: char) -> bool {
    is_key_char(c) || matches!(c, '@' | '+')
}

struct Parser<'a> {
    s: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }
    fn done(&self) -> bool {
        self.at == self.s.len()
    }
    fn space(&mut self) {
        let r = self.rest();
        self.at += r.len() - r.trim_start().len();
    }
    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }
    /// A keyword followed by a space (so `ANDROID` is not `AND`).
    fn keyword(&mut self, word: &str) -> bool {
        let r = self.rest();
        if r.starts_with(word) && r[word.len()..].starts_with(char::is_whitespace) {
            self.at += word.len();
            true
        } else {
            false
        }
    }
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let r = self.rest();
        let n = r.find(|c: char| !f(c)).unwrap_or(r.len());
        let start = self.at;
        self.at += n;
        &self.s[start..self.at]
    }

    fn term(&mut self) -> Result<Term, String> {
        if self.eat("labels.") {
            let key = self.take_while(is_key_char).to_owned();
            if key.is_empty() {
                return Err("expected a label key after labels.".into());
            }
            self.space();
            if self.eat("!=") {
                self.space();
                return Ok(Term::LabelNe(key, self.value()?));
            }
            if self.eat("=") {
                self.space();
                return Ok(Term::LabelEq(key, self.value()?));
            }
            if self.eat(":") {
                self.space();
                if self.eat("*") {
                    return Ok(Term::LabelPresent(key));
                }
                return Err("only labels.KEY:* (present) is supported after ':'".into());
            }
            return Err(format!("expected =, != or :* after labels.{key}"));
        }
        let field = self.take_while(is_key_char).to_owned();
        if field == "name" {
            self.space();
            if self.eat("=") {
                self.space();
                return Ok(Term::NameEq(self.value()?));
            }
            return Err("expected = after name".into());
        }
        if field.is_empty() {
            Err("expected a comparison (labels.KEY = \"VALUE\")".into())
        } else {
            Err(format!(
                "{field:?} cannot be filtered on (labels.KEY and name can)"
            ))
        }
    }

    fn value(&mut self) -> Result<String, String> {
        if !self.eat("\"") {
            let v = self.take_while(is_bare_char).to_owned();
            if v.is_empty() {
                return Err("expected a value".into());
            }
            return Ok(v);
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, e @ ('"' | '\\'))) => out.push(e),
                    _ => return Err("only \\\" and \\\\ are escapes".into()),
                },
                c => out.push(c),
            }
        }
        Err("unterminated string".into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;

    use super::Filter;

    fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn conjunctions_of_label_comparisons() {
        let f = Filter::parse(r#"labels.app = "web" AND labels.zone="a""#).unwrap();
        assert!(f.matches("x", Some(&labels(&[("app", "web"), ("zone", "a")]))));
        assert!(!f.matches("x", Some(&labels(&[("app", "web"), ("zone", "b")]))));
        assert!(!f.matches("x", Some(&labels(&[("app", "web")]))));
        let f = Filter::parse(r#"labels.app != "web" AND labels.tier:*"#).unwrap();
        assert!(f.matches("x", Some(&labels(&[("tier", "1")]))));
        assert!(!f.matches("x", Some(&labels(&[("app", "web"), ("tier", "1")]))));
        assert!(!f.matches("x", Some(&labels(&[]))));
        let f = Filter::parse(r#"name = "b1" AND labels.k8s.io/app = a-b"#).unwrap();
        assert!(f.matches("b1", Some(&labels(&[("k8s.io/app", "a-b")]))));
        assert!(!f.matches("b2", Some(&labels(&[("k8s.io/app", "a-b")]))));
        assert!(Filter::parse("  ").unwrap().is_empty());
        let f = Filter::parse(r#"labels.q = "say \"hi\" \\ ok""#).unwrap();
        assert!(f.matches("x", Some(&labels(&[("q", r#"say "hi" \ ok"#)]))));
    }

    #[test]
    fn bad_filters_say_where() {
        for (text, says) in [
            ("labels.app", "expected =, != or :*"),
            (r#"labels.app = "web" OR labels.x = "y""#, "expected AND"),
            (r#"address = "x""#, "cannot be filtered on"),
            (r#"labels.app = "web"#, "unterminated"),
            ("labels.app = ", "expected a value"),
            ("labels. = a", "expected a label key"),
            (r#"labels.a = "\n""#, "escapes"),
            ("labels.a:x", ":*"),
            ("= a", "expected a comparison"),
        ] {
            let e = Filter::parse(text).unwrap_err();
            assert_eq!(e.field, "filter");
            assert!(e.message.contains(says), "{text}: {}", e.message);
        }
        let long = "labels.a:* AND ".repeat(40) + "labels.a:*";
        assert!(
            Filter::parse(&long)
                .unwrap_err()
                .message
                .contains("at most")
        );
        let huge = "x".repeat(5000);
        assert!(Filter::parse(&huge).unwrap_err().message.contains("longer"));
    }

    #[test]
    fn selectors_become_filters() {
        assert_eq!(
            Filter::from_selector("app=web, zone!=b,tier").unwrap(),
            r#"labels.app = "web" AND labels.zone != "b" AND labels.tier:*"#
        );
        assert_eq!(
            Filter::from_selector("app==web").unwrap(),
            r#"labels.app = "web""#
        );
        let f = Filter::parse(&Filter::from_selector(r#"q=a"b"#).unwrap()).unwrap();
        assert!(f.matches("x", Some(&[("q".to_owned(), r#"a"b"#.to_owned())].into())));
        assert!(Filter::from_selector("a b=c").is_err());
        assert!(Filter::from_selector("").is_err());
    }
}
