//! QA rules as `route rule add` takes them: one matcher flag (`--header NAME=VALUE`,
//! `--cookie-prefix NAME=PREFIX`, `--query-present NAME`, …) becomes a [`RuleConfig`].

use clap::Args;
use meshcanary_core::config::RuleConfig;

/// `NAME=VALUE` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The header, cookie or query parameter name.
    pub name: String,
    /// What its value is compared with.
    pub value: String,
}

/// Splits `NAME=VALUE` at the first `=`; the value may itself contain `=` (cookies often do).
pub fn parse_key_value(text: &str) -> Result<KeyValue, String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok(KeyValue {
            name: name.trim().to_string(),
            value: value.to_string(),
        }),
        Some(_) => Err(format!("{text:?} has no name before '='")),
        None => Err(format!(
            "{text:?} is not NAME=VALUE (e.g. x-canary=always); to match on presence alone use the -present flag"
        )),
    }
}

/// Where a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// A query parameter.
    Query,
}

/// How a rule compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// It is there, with any value.
    Present,
}

/// The matcher flags of `route rule add`; clap makes sure exactly one is given.
#[derive(Debug, Clone, Args)]
#[group(id = "matcher", required = true, multiple = false)]
#[command(next_help_heading = "Match (give exactly one)")]
pub struct MatchArgs {
    /// Match requests whose header NAME equals VALUE (header names are case-insensitive).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub header: Option<KeyValue>,
    /// Match requests whose header NAME starts with PREFIX.
    #[arg(long, value_name = "NAME=PREFIX", value_parser = parse_key_value)]
    pub header_prefix: Option<KeyValue>,
    /// Match requests that carry header NAME, with any value.
    #[arg(long, value_name = "NAME")]
    pub header_present: Option<String>,
    /// Match requests whose cookie NAME equals VALUE.
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub cookie: Option<KeyValue>,
    /// Match requests whose cookie NAME starts with PREFIX.
    #[arg(long, value_name = "NAME=PREFIX", value_parser = parse_key_value)]
    pub cookie_prefix: Option<KeyValue>,
    /// Match requests that carry cookie NAME, with any value.
    #[arg(long, value_name = "NAME")]
    pub cookie_present: Option<String>,
    /// Match requests whose query parameter NAME equals VALUE (compared as sent, not decoded).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_key_value)]
    pub query: Option<KeyValue>,
    /// Match requests whose query parameter NAME starts with PREFIX.
    #[arg(long, value_name = "NAME=PREFIX", value_parser = parse_key_value)]
    pub query_prefix: Option<KeyValue>,
    /// Match requests that carry query parameter NAME, with any value.
    #[arg(long, value_name = "NAME")]
    pub query_present: Option<String>,
}

impl MatchArgs {
    /// The one matcher given, as (source, name, matcher). `None` only if clap's group check was
    /// bypassed, which the caller reports as a usage error.
    pub fn matcher(&self) -> Option<(Source, String, Matcher)> {
        let exact = |kv: &KeyValue| (kv.name.clone(), Matcher::Exact(kv.value.clone()));
        let prefix = |kv: &KeyValue| (kv.name.clone(), Matcher::Prefix(kv.value.clone()));
        let present = |name: &String| (name.clone(), Matcher::Present);
        let candidates = [
            (Source::Header, self.header.as_ref().map(exact)),
            (Source::Header, self.header_prefix.as_ref().map(prefix)),
            (Source::Header, self.header_present.as_ref().map(present)),
            (Source::Cookie, self.cookie.as_ref().map(exact)),
            (Source::Cookie, self.cookie_prefix.as_ref().map(prefix)),
            (Source::Cookie, self.cookie_present.as_ref().map(present)),
            (Source::Query, self.query.as_ref().map(exact)),
            (Source::Query, self.query_prefix.as_ref().map(prefix)),
            (Source::Query, self.query_present.as_ref().map(present)),
        ];
        candidates
            .into_iter()
            .find_map(|(source, found)| found.map(|(name, matcher)| (source, name, matcher)))
    }
}

/// The rule the API takes.
pub fn rule(variant: &str, source: Source, name: &str, matcher: Matcher) -> RuleConfig {
    let mut rule = RuleConfig {
        variant: variant.to_string(),
        ..RuleConfig::default()
    };
    let name = Some(name.to_string());
    match source {
        Source::Header => rule.header = name,
        Source::Cookie => rule.cookie = name,
        Source::Query => rule.query = name,
    }
    match matcher {
        Matcher::Exact(value) => rule.exact = Some(value),
        Matcher::Prefix(value) => rule.prefix = Some(value),
        Matcher::Present => rule.present = Some(true),
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_values_split_at_the_first_equals_sign() {
        let cases = [
            ("x-canary=always", Ok(("x-canary", "always"))),
            ("session=a=b", Ok(("session", "a=b"))),
            ("x-empty=", Ok(("x-empty", ""))),
            (" x-pad =v", Ok(("x-pad", "v"))),
            ("=v", Err("no name before '='")),
            ("x-canary", Err("is not NAME=VALUE")),
        ];
        for (text, expected) in cases {
            match (parse_key_value(text), expected) {
                (Ok(kv), Ok((name, value))) => {
                    assert_eq!(
                        (kv.name.as_str(), kv.value.as_str()),
                        (name, value),
                        "{text}"
                    )
                }
                (Err(error), Err(part)) => assert!(error.contains(part), "{text}: {error}"),
                (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn rules_serialize_as_the_api_expects() {
        let cases = [
            (
                Source::Header,
                Matcher::Exact("always".into()),
                json!({"variant": "v2", "header": "x-canary", "exact": "always"}),
            ),
            (
                Source::Cookie,
                Matcher::Prefix("qa-".into()),
                json!({"variant": "v2", "cookie": "x-canary", "prefix": "qa-"}),
            ),
            (
                Source::Query,
                Matcher::Present,
                json!({"variant": "v2", "query": "x-canary", "present": true}),
            ),
        ];
        for (source, matcher, expected) in cases {
            let rule = rule("v2", source, "x-canary", matcher);
            assert_eq!(serde_json::to_value(&rule).unwrap(), expected);
        }
    }

    #[test]
    fn the_given_flag_becomes_the_matcher() {
        let none = MatchArgs {
            header: None,
            header_prefix: None,
            header_present: None,
            cookie: None,
            cookie_prefix: None,
            cookie_present: None,
            query: None,
            query_prefix: None,
            query_present: None,
        };
        assert_eq!(none.matcher(), None);
        let kv = KeyValue {
            name: "n".into(),
            value: "v".into(),
        };
        let cases = [
            (
                MatchArgs {
                    header_prefix: Some(kv.clone()),
                    ..none.clone()
                },
                (Source::Header, Matcher::Prefix("v".into())),
            ),
            (
                MatchArgs {
                    cookie: Some(kv.clone()),
                    ..none.clone()
                },
                (Source::Cookie, Matcher::Exact("v".into())),
            ),
            (
                MatchArgs {
                    query_present: Some("n".into()),
                    ..none.clone()
                },
                (Source::Query, Matcher::Present),
            ),
        ];
        for (args, (source, matcher)) in cases {
            assert_eq!(args.matcher(), Some((source, "n".to_string(), matcher)));
        }
    }
}
