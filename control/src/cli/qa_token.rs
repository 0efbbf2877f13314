//! `meshcanary qa-token`: mints a signed QA token for a route's signed rule, offline.
//!
//! The token and its MAC are `meshcanary_core::token`'s, the code the filter verifies them with,
//! so the two cannot disagree on the format. The signing key is one of the rule's `tokenKeys`
//! (`<key id>:<secret>`), read from `MESHCANARY_QA_KEY` or a file — never from the command line,
//! where `ps` and shell history would show it. No service is contacted.

use super::client::CliError;
use crate::time::HumanDuration;
use clap::Args;
use meshcanary_core::token::{mint, TokenKey};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest lifetime a token may be minted for: a QA token is a temporary pass, and the only way
/// to revoke one before it expires is to retire its key.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Arguments of `meshcanary qa-token`.
#[derive(Debug, Clone, Args)]
pub struct QaTokenArgs {
    /// The variant the token opens, e.g. v2.
    #[arg(long, value_name = "VARIANT")]
    pub variant: String,
    /// How long the token is valid: 30m, 2h, 7d (at most 30 days).
    #[arg(long, value_name = "DURATION")]
    pub ttl: HumanDuration,
    /// Read the signing key (`<key id>:<secret>`, as in the rule's tokenKeys) from this file;
    /// without it, from MESHCANARY_QA_KEY.
    #[arg(long, env = "MESHCANARY_QA_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// The token `args` ask for, valid from `now` (seconds since the Unix epoch) for `--ttl`, signed
/// with the key from `--key-file` or, without it, `env_key` (MESHCANARY_QA_KEY).
pub fn token(args: &QaTokenArgs, env_key: Option<&str>, now: u64) -> Result<String, CliError> {
    let key_text = match &args.key_file {
        Some(path) => std::fs::read_to_string(path).map_err(|error| {
            CliError::Usage(format!(
                "cannot read the key file {}: {error}",
                path.display()
            ))
        })?,
        None => env_key.unwrap_or_default().to_string(),
    };
    let key_text = key_text.trim();
    if key_text.is_empty() {
        return Err(CliError::Usage(
            "no signing key: set MESHCANARY_QA_KEY or --key-file to one of the rule's tokenKeys (\"<key id>:<secret>\")".into(),
        ));
    }
    let key = TokenKey::parse(key_text)
        .map_err(|reason| CliError::Usage(format!("the signing key {reason}")))?;
    let variant = &args.variant;
    let is_label = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if variant.is_empty() || !variant.chars().all(is_label) {
        return Err(CliError::Usage(format!(
            "--variant {variant:?}: a variant name is letters, digits, '_' and '-'"
        )));
    }
    let ttl = args.ttl.0;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(CliError::Usage(format!(
            "--ttl {}: give a duration from 1s to 30 days",
            args.ttl
        )));
    }
    Ok(mint(
        &key,
        variant,
        now.saturating_add(ttl.as_secs().max(1)),
    ))
}

/// Runs the command: prints the token alone on a line, so `$(meshcanary qa-token …)` is it.
pub fn run(args: &QaTokenArgs) -> Result<u8, CliError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| CliError::Failed {
            doing: "read the clock".into(),
            reason: error.to_string(),
        })?
        .as_secs();
    let env_key = std::env::var("MESHCANARY_QA_KEY").ok();
    super::print(&token(args, env_key.as_deref(), now)?)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcanary_core::token::{verify, Rejection};

    const KEY: &str = "k1:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

    fn args(variant: &str, ttl: &str, key_file: Option<PathBuf>) -> QaTokenArgs {
        QaTokenArgs {
            variant: variant.into(),
            ttl: ttl.parse().unwrap(),
            key_file,
        }
    }

    #[test]
    fn mints_what_the_filter_accepts_until_it_expires() {
        let token = token(&args("v2", "2h", None), Some(KEY), 1_000).unwrap();
        assert!(token.starts_with("k1.v2.8200."), "{token}");
        let keys = [TokenKey::parse(KEY).unwrap()];
        assert_eq!(verify(&keys, token.as_bytes(), Some(8_199)), Ok(&b"v2"[..]));
        assert_eq!(
            verify(&keys, token.as_bytes(), Some(8_200)),
            Err(Rejection::Expired)
        );
    }

    #[test]
    fn reads_the_key_from_a_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, format!("{}\n", KEY.replace("k1", "file"))).unwrap();
        let token = token(&args("v3", "30m", Some(path)), Some(KEY), 0).unwrap();
        assert!(token.starts_with("file.v3.1800."), "{token}");
    }

    #[test]
    fn usage_errors_say_what_to_fix() {
        let cases: Vec<(QaTokenArgs, Option<&str>, &str)> = vec![
            (
                args("v2", "2h", None),
                None,
                "no signing key: set MESHCANARY_QA_KEY",
            ),
            (
                args("v2", "2h", None),
                Some("k1:c2hvcnQ"),
                "the signing key",
            ),
            (args("v.2", "2h", None), Some(KEY), "--variant \"v.2\""),
            (args("v2", "31d", None), Some(KEY), "from 1s to 30 days"),
            (args("v2", "0s", None), Some(KEY), "from 1s to 30 days"),
            (
                args("v2", "1h", Some("/nonexistent/key".into())),
                Some(KEY),
                "cannot read the key file /nonexistent/key",
            ),
        ];
        for (args, key, message) in cases {
            let error = token(&args, key, 0).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{error}");
            assert!(error.to_string().contains(message), "{error}");
        }
    }
}
