//! The demo's knobs: a small HTTP server that shows and sets how the demo upstreams behave, so a
//! person can break a variant (or mend it) and watch a rollout react.
//!
//! `GET /` lists them; `POST /v3?errors=10&delayMs=200` makes v3 answer one request in ten with a
//! 500 and wait 200 ms before each answer (either parameter alone is fine; `errors=0` mends it).

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use meshcanary_testkit::upstream::{Behaviour, Upstream};
use meshcanary_testkit::LocalServer;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

type Upstreams = Arc<BTreeMap<String, Arc<Behaviour>>>;

/// The running knobs server; stops when dropped.
pub struct Knobs {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    _server: LocalServer,
}

impl Knobs {
    /// Serves the knobs of `upstreams` on a free loopback port.
    pub async fn start(upstreams: &[Upstream]) -> Knobs {
        let behaviours: Upstreams = Arc::new(
            upstreams
                .iter()
                .map(|u| (u.name.clone(), u.behaviour.clone()))
                .collect(),
        );
        let app = axum::Router::new()
            .route("/", get(list))
            .route("/{name}", post(set))
            .with_state(behaviours);
        let server = LocalServer::start(app).await;
        Knobs {
            base_url: server.url.clone(),
            _server: server,
        }
    }
}

/// `v3: 10 % errors (1 in 10), 200 ms delay, 1234 requests served`.
fn describe(name: &str, behaviour: &Behaviour) -> String {
    let every = behaviour.fail_every.load(Ordering::SeqCst);
    let errors = match every {
        0 => "no errors".to_string(),
        n => format!("{} % errors (1 in {n})", number(100.0 / n as f64)),
    };
    format!(
        "{name}: {errors}, {} ms delay, {} requests served\n",
        behaviour.delay_ms.load(Ordering::SeqCst),
        behaviour.served.load(Ordering::SeqCst)
    )
}

fn number(x: f64) -> String {
    let text = format!("{x:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

async fn list(State(upstreams): State<Upstreams>) -> String {
    upstreams
        .iter()
        .map(|(name, behaviour)| describe(name, behaviour))
        .collect()
}

/// The settings a `POST` asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Settings {
    /// Answer one request in this many with a 500 (0: none).
    fail_every: Option<u64>,
    /// Milliseconds to wait before answering.
    delay_ms: Option<u64>,
}

/// Parses `errors=PERCENT&delayMs=N`. A percentage becomes "one request in round(100 / p)".
fn parse_settings(query: &str) -> Result<Settings, String> {
    let mut settings = Settings::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "errors" => {
                let percent: f64 = value
                    .parse()
                    .ok()
                    .filter(|p: &f64| (0.0..=100.0).contains(p))
                    .ok_or_else(|| format!("errors={value:?} is not a percentage from 0 to 100"))?;
                settings.fail_every = Some(if percent == 0.0 {
                    0
                } else {
                    (100.0 / percent).round().max(1.0) as u64
                });
            }
            "delayMs" => {
                let ms = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 60_000)
                    .ok_or_else(|| {
                        format!("delayMs={value:?} is not a number of milliseconds up to 60000")
                    })?;
                settings.delay_ms = Some(ms);
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: use errors=PERCENT and delayMs=N"
                ))
            }
        }
    }
    if settings == Settings::default() {
        return Err("nothing to set: use errors=PERCENT and/or delayMs=N".into());
    }
    Ok(settings)
}

async fn set(
    State(upstreams): State<Upstreams>,
    Path(name): Path<String>,
    uri: Uri,
) -> (StatusCode, String) {
    let Some(behaviour) = upstreams.get(&name) else {
        let names: Vec<&str> = upstreams.keys().map(String::as_str).collect();
        return (
            StatusCode::NOT_FOUND,
            format!("no upstream {name:?}; there are {}\n", names.join(", ")),
        );
    };
    match parse_settings(uri.query().unwrap_or_default()) {
        Ok(settings) => {
            if let Some(every) = settings.fail_every {
                behaviour.fail_every.store(every, Ordering::SeqCst);
            }
            if let Some(ms) = settings.delay_ms {
                behaviour.delay_ms.store(ms, Ordering::SeqCst);
            }
            (StatusCode::OK, describe(&name, behaviour))
        }
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_from_the_query() {
        let ok = |fail_every, delay_ms| {
            Ok(Settings {
                fail_every,
                delay_ms,
            })
        };
        let cases: [(&str, Result<Settings, &str>); 8] = [
            ("errors=10", ok(Some(10), None)),
            ("errors=5&delayMs=200", ok(Some(20), Some(200))),
            ("errors=0", ok(Some(0), None)),
            ("errors=100", ok(Some(1), None)),
            ("delayMs=0", ok(None, Some(0))),
            ("errors=150", Err("not a percentage")),
            ("delay=5", Err("unknown parameter \"delay\"")),
            ("", Err("nothing to set")),
        ];
        for (query, expected) in cases {
            match (parse_settings(query), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{query}"),
                (Err(error), Err(part)) => assert!(error.contains(part), "{query}: {error}"),
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn behaviours_read_well() {
        let behaviour = Behaviour::default();
        assert_eq!(
            describe("v1", &behaviour),
            "v1: no errors, 0 ms delay, 0 requests served\n"
        );
        behaviour.fail_every.store(3, Ordering::SeqCst);
        behaviour.delay_ms.store(200, Ordering::SeqCst);
        assert_eq!(
            describe("v3", &behaviour),
            "v3: 33.33 % errors (1 in 3), 200 ms delay, 0 requests served\n"
        );
    }
}
