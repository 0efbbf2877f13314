//! The HTTP client of the control API, and the CLI's errors: what failed, in words a person
//! understands, with a hint at what to do and the exit code that goes with it.

use crate::api::error::ErrorBody;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// How long one request may take, connecting included. The API answers from memory (writes touch
/// one file), so anything slower means something is wrong.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// For [`ApiClient::send`] without a body.
pub const NO_BODY: Option<&()> = None;

/// Exit code when the service refused the request or it failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for usage errors (clap uses the same).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the service could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// What a request is about; picks the hint shown with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Rollouts in general (list, create).
    Rollouts,
    /// One rollout, by name.
    Rollout(String),
    /// The filter's routes and their rules.
    Routes,
}

/// Why a request is made: `doing` completes "cannot …" in errors ("pause rollout reviews-v2").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    /// What the command was doing, e.g. `list rollouts`.
    pub doing: String,
    /// What it is about.
    pub subject: Subject,
}

impl Purpose {
    /// `doing` is what the command does, in words ("pause rollout r1"); `subject` is what a 404
    /// is about.
    pub fn new(doing: impl Into<String>, subject: Subject) -> Purpose {
        Purpose {
            doing: doing.into(),
            subject,
        }
    }
}

/// Everything that can make a CLI command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection to the service (refused, DNS, timeout).
    #[error("cannot reach the meshcanary service at {url}: {reason}; is it running? (set --server or MESHCANARY_SERVER)")]
    Unreachable {
        /// The server URL as configured.
        url: String,
        /// Why, from the innermost error.
        reason: String,
    },
    /// The service answered with an error.
    #[error("cannot {doing}: {message} (HTTP {status}{})", code_suffix(code))]
    Api {
        /// What was being done.
        doing: String,
        /// The HTTP status.
        status: u16,
        /// The API's stable error code, if the body had one.
        code: Option<String>,
        /// The API's message, or the status text.
        message: String,
        /// The field to blame, if the API named one.
        field: Option<String>,
        /// What to do about it.
        hint: Option<String>,
    },
    /// The request failed some other way, or the answer made no sense.
    #[error("cannot {doing}: {reason}")]
    Failed {
        /// What was being done.
        doing: String,
        /// What the service or the connection said.
        reason: String,
    },
    /// The command line or a file it named is wrong, found after clap's checks (a token file that
    /// cannot be read, a spec file that is not a rollout spec, a server URL that is not a URL).
    #[error("{0}")]
    Usage(String),
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref()
        .map_or(String::new(), |code| format!(", {code}"))
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Api { .. } | CliError::Failed { .. } | CliError::Output(_) => EXIT_FAILED,
        }
    }

    /// The full report for stderr: `error: …`, then the field and a hint on their own lines.
    pub fn report(&self) -> String {
        let mut text = format!("error: {self}");
        if let CliError::Api { field, hint, .. } = self {
            if let Some(field) = field {
                text.push_str(&format!("\n  field: {field}"));
            }
            if let Some(hint) = hint {
                text.push_str(&format!("\n  hint: {hint}"));
            }
        }
        text
    }
}

/// What to tell a person about an error status, given what the request was about.
pub fn hint(status: StatusCode, subject: &Subject) -> Option<String> {
    let text = match (status, subject) {
        (StatusCode::UNAUTHORIZED, _) => {
            "set MESHCANARY_TOKEN or pass --token (or --token-file) with the service's token".into()
        }
        (StatusCode::NOT_FOUND, Subject::Routes) => {
            "list the routes and their rule numbers with `meshcanary route list`".into()
        }
        (StatusCode::NOT_FOUND, _) => "list the rollouts with `meshcanary rollout list`".into(),
        (StatusCode::CONFLICT, Subject::Rollout(name)) => {
            format!("see where it stands with `meshcanary rollout status {name}`")
        }
        (StatusCode::CONFLICT, _) => {
            "see the rollouts and their phases with `meshcanary rollout list`".into()
        }
        (StatusCode::PRECONDITION_FAILED, _) => {
            "it changed meanwhile; look at it again and retry".into()
        }
        (status, _) if status.is_server_error() => {
            "the service's log has the details; retry once it is fixed".into()
        }
        _ => return None,
    };
    Some(text)
}

/// Turns an error response into a [`CliError::Api`]. Bodies that are not the API's error shape
/// (a proxy in between, say) are shown shortened instead.
pub fn api_error(status: StatusCode, body: &[u8], purpose: &Purpose) -> CliError {
    let (code, message, field) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => (Some(error.code), error.message, error.field),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let reason = status.canonical_reason().unwrap_or("error");
            let message = match text.chars().count() {
                0 => reason.to_string(),
                n if n > 200 => {
                    format!("{reason}: {}…", text.chars().take(200).collect::<String>())
                }
                _ => format!("{reason}: {text}"),
            };
            (None, message, None)
        }
    };
    CliError::Api {
        doing: purpose.doing.clone(),
        status: status.as_u16(),
        code,
        message,
        field,
        hint: hint(status, &purpose.subject),
    }
}

/// The innermost cause of an error: for a refused connection that is
/// "Connection refused (os error 111)" rather than "error sending request for url (…)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Decodes an answer into the type the CLI renders.
pub fn decode<T: DeserializeOwned>(value: Value, purpose: &Purpose) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|error| CliError::Failed {
        doing: purpose.doing.clone(),
        reason: format!(
            "the service's answer is not what this CLI understands ({error}); are the CLI and the service the same version? (-o json shows the answer as it is)"
        ),
    })
}

/// A client of one control service.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    server: String,
    token: Option<String>,
}

impl ApiClient {
    /// A client of the service at `server` (`http://host:port`), sending `token` if given.
    pub fn new(server: &str, token: Option<String>) -> Result<ApiClient, CliError> {
        let base = Url::parse(server.trim()).map_err(|error| {
            CliError::Usage(format!(
                "--server {server:?} is not a URL ({error}); give one like http://127.0.0.1:7070"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CliError::Usage(format!(
                "--server {server:?} is not an http:// or https:// URL; give one like http://127.0.0.1:7070"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("meshcanary-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| CliError::Failed {
                doing: "set up the HTTP client".into(),
                reason: root_cause(&error),
            })?;
        Ok(ApiClient {
            http,
            base,
            server: server.trim().trim_end_matches('/').to_string(),
            token,
        })
    }

    /// The URL of `segments` under the server's base URL, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// GETs `segments` and returns the JSON answer.
    pub async fn get(&self, segments: &[&str], purpose: &Purpose) -> Result<Value, CliError> {
        self.send(Method::GET, segments, NO_BODY, purpose).await
    }

    /// GETs `segments` with the query parameters `query` and returns the JSON answer.
    pub async fn get_query(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
        purpose: &Purpose,
    ) -> Result<Value, CliError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        self.send_to(Method::GET, url, NO_BODY, purpose).await
    }

    /// Sends a request with an optional JSON body; returns the JSON answer (`null` when there is
    /// none, as for 204).
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        purpose: &Purpose,
    ) -> Result<Value, CliError> {
        self.send_to(method, self.url(segments), body, purpose)
            .await
    }

    async fn send_to<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        purpose: &Purpose,
    ) -> Result<Value, CliError> {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.failure(error, purpose))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| self.failure(error, purpose))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes, purpose));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|error| CliError::Failed {
            doing: purpose.doing.clone(),
            reason: format!(
                "the answer is not JSON ({error}); is {} a meshcanary service?",
                self.server
            ),
        })
    }

    fn failure(&self, error: reqwest::Error, purpose: &Purpose) -> CliError {
        if error.is_timeout() {
            return CliError::Unreachable {
                url: self.server.clone(),
                reason: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
            };
        }
        if error.is_connect() {
            return CliError::Unreachable {
                url: self.server.clone(),
                reason: root_cause(&error),
            };
        }
        CliError::Failed {
            doing: purpose.doing.clone(),
            reason: root_cause(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purpose(subject: Subject) -> Purpose {
        Purpose::new("pause rollout r", subject)
    }

    #[test]
    fn api_errors_carry_message_field_hint_and_exit_code() {
        let body = br#"{"error":{"code":"invalid_field","message":"steps[0].setWeight.percent: 120 is not between 0 and 100","field":"steps[0].setWeight.percent"}}"#;
        let error = api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            body,
            &purpose(Subject::Rollouts),
        );
        assert_eq!(error.exit_code(), EXIT_FAILED);
        assert_eq!(
            error.report(),
            "error: cannot pause rollout r: steps[0].setWeight.percent: 120 is not between 0 and 100 (HTTP 422, invalid_field)\n  field: steps[0].setWeight.percent"
        );
    }

    #[test]
    fn hints_fit_the_status_and_subject() {
        let rollout = Subject::Rollout("r".into());
        let cases = [
            (
                StatusCode::UNAUTHORIZED,
                &Subject::Routes,
                Some("set MESHCANARY_TOKEN or pass --token"),
            ),
            (
                StatusCode::NOT_FOUND,
                &rollout,
                Some("`meshcanary rollout list`"),
            ),
            (
                StatusCode::NOT_FOUND,
                &Subject::Rollouts,
                Some("`meshcanary rollout list`"),
            ),
            (
                StatusCode::NOT_FOUND,
                &Subject::Routes,
                Some("`meshcanary route list`"),
            ),
            (
                StatusCode::CONFLICT,
                &rollout,
                Some("`meshcanary rollout status r`"),
            ),
            (
                StatusCode::CONFLICT,
                &Subject::Rollouts,
                Some("`meshcanary rollout list`"),
            ),
            (
                StatusCode::PRECONDITION_FAILED,
                &rollout,
                Some("changed meanwhile"),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                &rollout,
                Some("service's log"),
            ),
            (StatusCode::UNPROCESSABLE_ENTITY, &rollout, None),
            (StatusCode::BAD_REQUEST, &rollout, None),
        ];
        for (status, subject, expected) in cases {
            let got = hint(status, subject);
            match expected {
                Some(part) => assert!(
                    got.as_deref().is_some_and(|h| h.contains(part)),
                    "{status}: {got:?}"
                ),
                None => assert_eq!(got, None, "{status}"),
            }
        }
    }

    #[test]
    fn foreign_error_bodies_are_shown_shortened() {
        let cases: [(&[u8], &str); 3] = [
            (b"", "error: cannot pause rollout r: Bad Gateway (HTTP 502)"),
            (
                b"<html>upstream down</html>",
                "error: cannot pause rollout r: Bad Gateway: <html>upstream down</html> (HTTP 502)",
            ),
            (&[b'x'; 500], "xxx\u{2026} (HTTP 502)"),
        ];
        for (body, expected) in cases {
            let error = api_error(StatusCode::BAD_GATEWAY, body, &purpose(Subject::Routes));
            let report = error.report();
            assert!(
                report.starts_with(expected) || report.contains(expected),
                "{report}"
            );
            assert!(report.contains("hint: the service's log"), "{report}");
        }
    }

    #[test]
    fn exit_codes() {
        let unreachable = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        assert_eq!(unreachable.exit_code(), EXIT_UNREACHABLE);
        assert_eq!(
            unreachable.report(),
            "error: cannot reach the meshcanary service at http://127.0.0.1:1: Connection refused (os error 111); is it running? (set --server or MESHCANARY_SERVER)"
        );
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_USAGE);
        let failed = CliError::Failed {
            doing: "list rollouts".into(),
            reason: "r".into(),
        };
        assert_eq!(failed.exit_code(), EXIT_FAILED);
    }

    #[test]
    fn urls_keep_a_base_path_and_encode_segments() {
        let cases = [
            (
                "http://127.0.0.1:7070",
                vec!["v1", "rollouts"],
                "http://127.0.0.1:7070/v1/rollouts",
            ),
            (
                "http://h:1/",
                vec!["v1", "rollouts", "a b"],
                "http://h:1/v1/rollouts/a%20b",
            ),
            (
                "https://h/meshcanary/",
                vec!["v1", "routes"],
                "https://h/meshcanary/v1/routes",
            ),
            (
                "http://h/",
                vec!["v1", "rollouts", "../x"],
                "http://h/v1/rollouts/..%2Fx",
            ),
        ];
        for (server, segments, expected) in cases {
            let client = ApiClient::new(server, None).unwrap();
            assert_eq!(client.url(&segments).as_str(), expected, "{server}");
        }
    }

    #[test]
    fn servers_must_be_http_urls() {
        for server in ["127.0.0.1:7070", "ftp://h", "not a url", "mailto:a@b"] {
            let error = ApiClient::new(server, None).unwrap_err();
            assert_eq!(error.exit_code(), EXIT_USAGE, "{server}");
            assert!(
                error.to_string().contains("http://127.0.0.1:7070"),
                "{server}"
            );
        }
    }
}
