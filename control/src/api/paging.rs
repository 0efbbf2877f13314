//! Paging through `GET /v1/rollouts`: `?limit=N` and the opaque `continue` token of the page
//! before.
//!
//! Rollouts are listed newest first: by creation time, then by name. The token names where a page
//! ended — the (creation time, name) of its last rollout — and the next page holds the rollouts
//! after that in the same order. Neither key changes in a rollout's life, so paging holds up under
//! concurrent writes without the service keeping anything per client: a rollout that exists from
//! the first page to the last is listed exactly once and in order, whatever else changes; one
//! deleted meanwhile is not on the pages after; one created meanwhile is newer than any page
//! already read, so it shows on the first page of the next listing, not on later pages of this
//! one. A token stays valid for as long as anyone keeps it.

use crate::error::{Error, Result};
use crate::rollout::Rollout;
use crate::time::Timestamp;
use std::cmp::Ordering;

/// Rollouts on a page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rollouts a page may hold.
pub const MAX_LIMIT: usize = 1000;

/// Where a page ended: its last rollout's creation time and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// When the last rollout of the page was created.
    pub created_at: Timestamp,
    /// Its name.
    pub name: String,
}

impl Cursor {
    /// The cursor after `rollout`.
    pub fn after(rollout: &Rollout) -> Cursor {
        Cursor {
            created_at: rollout.status.created_at,
            name: rollout.spec.name.clone(),
        }
    }

    /// The token clients pass back as `continue`. Its form is ours to change; clients must not
    /// build one.
    pub fn token(&self) -> String {
        format!("1.{}.{}", self.created_at.0, self.name)
    }

    /// Reads a token that [`Cursor::token`] made.
    pub fn parse(token: &str) -> Result<Cursor> {
        let invalid = || {
            Error::invalid(
                "continue",
                format!("{token:?} is not a continue token of this service; pass the \"continue\" of the page before, as it was"),
            )
        };
        let rest = token.strip_prefix("1.").ok_or_else(invalid)?;
        let (millis, name) = rest.split_once('.').ok_or_else(invalid)?;
        let created_at = millis.parse().map(Timestamp).map_err(|_| invalid())?;
        let plausible = !name.is_empty()
            && name.len() <= crate::rollout::MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !plausible {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at,
            name: name.to_string(),
        })
    }
}

/// What a list request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// At most this many rollouts.
    pub limit: usize,
    /// Start after this one (the `continue` token), or from the newest.
    pub after: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> ListQuery {
        ListQuery {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl ListQuery {
    /// Reads the query string (`limit`, `continue`). A key the endpoint does not take, a key given
    /// twice or a limit that is not a number is a 400 naming it; a limit out of range or a token
    /// this service did not make is a 422. An empty `continue` is the first page.
    pub fn parse(query: Option<&str>) -> Result<ListQuery> {
        let mut limit: Option<String> = None;
        let mut token: Option<String> = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "limit" => &mut limit,
                "continue" => &mut token,
                other => {
                    return Err(Error::Malformed {
                        field: other.to_string(),
                        message: "not a parameter of this endpoint; it takes limit and continue"
                            .into(),
                    })
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(Error::Malformed {
                    field: key.into_owned(),
                    message: "given more than once".into(),
                });
            }
        }
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => {
                let limit: usize = text.parse().map_err(|_| Error::Malformed {
                    field: "limit".into(),
                    message: format!("{text:?} is not a whole number"),
                })?;
                if !(1..=MAX_LIMIT).contains(&limit) {
                    return Err(Error::invalid(
                        "limit",
                        format!("{limit} is not between 1 and {MAX_LIMIT}"),
                    ));
                }
                limit
            }
        };
        let after = match token.as_deref() {
            None | Some("") => None,
            Some(token) => Some(Cursor::parse(token)?),
        };
        Ok(ListQuery { limit, after })
    }
}

/// The listing order: newest first, then by name.
fn order(a: (&Timestamp, &str), b: (&Timestamp, &str)) -> Ordering {
    b.0.cmp(a.0).then_with(|| a.1.cmp(b.1))
}

/// The page `query` asks for out of every rollout, and the cursor after it if more follow.
pub fn page(mut rollouts: Vec<Rollout>, query: &ListQuery) -> (Vec<Rollout>, Option<Cursor>) {
    rollouts.sort_by(|a, b| {
        order(
            (&a.status.created_at, &a.spec.name),
            (&b.status.created_at, &b.spec.name),
        )
    });
    let start = match &query.after {
        None => 0,
        Some(cursor) => rollouts.partition_point(|rollout| {
            order(
                (&rollout.status.created_at, &rollout.spec.name),
                (&cursor.created_at, &cursor.name),
            ) != Ordering::Greater
        }),
    };
    let mut page: Vec<Rollout> = rollouts.into_iter().skip(start).collect();
    let more = page.len() > query.limit;
    page.truncate(query.limit);
    let next = if more {
        page.last().map(Cursor::after)
    } else {
        None
    };
    (page, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::RolloutSpec;
    use serde_json::json;

    fn rollout(name: &str, created: u64) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": name, "route": "reviews", "stable": "v1", "canary": "v2",
            "steps": [{"pause": {}}]
        }))
        .unwrap();
        Rollout::new(spec, 0, Timestamp(created)).unwrap()
    }

    fn names(rollouts: &[Rollout]) -> Vec<&str> {
        rollouts.iter().map(|r| r.spec.name.as_str()).collect()
    }

    /// Every page of `rollouts` with pages of `limit`, following the tokens as a client does.
    fn all_pages(rollouts: &[Rollout], limit: usize) -> Vec<Vec<String>> {
        let mut pages = Vec::new();
        let mut query = ListQuery { limit, after: None };
        loop {
            let (page, next) = super::page(rollouts.to_vec(), &query);
            pages.push(page.iter().map(|r| r.spec.name.clone()).collect());
            match next {
                Some(cursor) => {
                    query.after = Some(Cursor::parse(&cursor.token()).unwrap());
                }
                None => return pages,
            }
        }
    }

    #[test]
    fn pages_newest_first_then_by_name() {
        let rollouts = vec![
            rollout("a", 10),
            rollout("b", 30),
            rollout("c", 20),
            rollout("d", 30),
            rollout("e", 5),
        ];
        assert_eq!(
            all_pages(&rollouts, 2),
            [vec!["b", "d"], vec!["c", "a"], vec!["e"]]
        );
        assert_eq!(all_pages(&rollouts, 5), [vec!["b", "d", "c", "a", "e"]]);
        assert_eq!(all_pages(&rollouts, 100).len(), 1);
        assert_eq!(all_pages(&[], 3), [Vec::<String>::new()]);
    }

    /// A rollout that exists throughout is listed exactly once, whatever is created or deleted
    /// between pages.
    #[test]
    fn paging_is_stable_under_concurrent_writes() {
        let before = vec![
            rollout("r1", 100),
            rollout("r2", 200),
            rollout("r3", 300),
            rollout("r4", 400),
        ];
        let (first, next) = page(
            before.clone(),
            &ListQuery {
                limit: 2,
                after: None,
            },
        );
        assert_eq!(names(&first), ["r4", "r3"]);
        // Meanwhile: r3 (already listed) and r2 (not yet) are deleted, two rollouts created.
        let during = vec![
            rollout("r1", 100),
            rollout("r4", 400),
            rollout("new-a", 500),
            rollout("new-b", 50),
        ];
        let (second, next) = page(
            during,
            &ListQuery {
                limit: 2,
                after: next,
            },
        );
        // r1 follows as it would have; "new-b" sorts after the cursor (created at 50 — clocks can
        // disagree), so it shows; "new-a" is newer than the cursor and waits for the next listing.
        assert_eq!(names(&second), ["r1", "new-b"]);
        assert_eq!(next, None);
    }

    #[test]
    fn queries() {
        let cursor = Cursor {
            created_at: Timestamp(1_795_000_000_123),
            name: "reviews-v2".into(),
        };
        let token = cursor.token();
        let with_token = format!("limit=5&continue={token}");
        let ok: Vec<(Option<&str>, ListQuery)> = vec![
            (None, ListQuery::default()),
            (Some(""), ListQuery::default()),
            (Some("continue="), ListQuery::default()),
            (
                Some("limit=1000"),
                ListQuery {
                    limit: 1000,
                    after: None,
                },
            ),
            (
                Some(&with_token),
                ListQuery {
                    limit: 5,
                    after: Some(cursor.clone()),
                },
            ),
        ];
        for (query, expected) in ok {
            assert_eq!(ListQuery::parse(query).unwrap(), expected, "{query:?}");
        }
        let bad: [(&str, &str, &str); 9] = [
            ("limit=ten", "malformed_request", "limit"),
            ("limit=-1", "malformed_request", "limit"),
            ("limit=0", "invalid_field", "limit"),
            ("limit=1001", "invalid_field", "limit"),
            ("limit=1&limit=2", "malformed_request", "limit"),
            ("page=2", "malformed_request", "page"),
            ("continue=abc", "invalid_field", "continue"),
            ("continue=1.x.reviews", "invalid_field", "continue"),
            ("continue=1.5.Not_A_Name", "invalid_field", "continue"),
        ];
        for (query, code, field) in bad {
            let error = ListQuery::parse(Some(query)).unwrap_err();
            assert_eq!(error.code(), code, "{query}: {error}");
            let named = match &error {
                Error::Invalid { field, .. } | Error::Malformed { field, .. } => field.as_str(),
                _ => "",
            };
            assert_eq!(named, field, "{query}: {error}");
        }
    }
}
