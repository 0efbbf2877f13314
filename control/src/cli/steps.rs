//! The compact syntaxes people type for a rollout's plan:
//! `--steps "mirror 20% 1m,10%,pause,50%,pause 30s,100%"`,
//! `--progressive 10,50,90s`, weights (`25%`, `2500bp`) and durations.
//!
//! These parse into the API's own types ([`Step`], [`Weight`], [`Progressive`]) and check what
//! can be checked without the service, so a typo fails before any request, naming the item at
//! fault. The service validates again: it is the authority on, say, the maximum number of steps.

use crate::rollout::{MirrorStep, PauseStep, Progressive, Step, Weight};
use crate::time::HumanDuration;
use meshcanary_core::config::TOTAL_WEIGHT;

/// What a step item may look like, for error messages.
const STEP_SYNTAX: &str = "write N% or Nbp to set the canary weight (e.g. 10% or 1000bp), \
    \"pause\" to wait for `rollout resume`, \"pause DURATION\" to wait a while (e.g. pause 30s), or \
    \"mirror N% [DURATION]\" to copy a share of stable's requests to the canary (e.g. mirror 20% 1m)";

/// Parses `--steps`: comma-separated items, each `N%` or `Nbp` (set the canary weight), `pause`
/// (wait until resumed), `pause DURATION` (wait that long) or `mirror N% [DURATION]` (copy that
/// share of the route's other requests to the canary, for that long or until resumed). Errors
/// name the item (1-based).
pub fn parse_steps(text: &str) -> Result<Vec<Step>, String> {
    if text.trim().is_empty() {
        return Err(format!("no steps given; {STEP_SYNTAX}"));
    }
    text.split(',')
        .enumerate()
        .map(|(i, item)| parse_step(item).map_err(|why| format!("item {} {why}", i + 1)))
        .collect()
}

/// One `--steps` item; the error starts with the quoted item so the caller can prefix its number.
fn parse_step(item: &str) -> Result<Step, String> {
    let trimmed = item.trim();
    if trimmed.is_empty() {
        return Err("is empty (two commas in a row, or a comma at the end?)".into());
    }
    let lower = trimmed.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("pause") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(Step::Pause(PauseStep { duration: None }));
        }
        return parse_duration(rest)
            .map(|duration| {
                Step::Pause(PauseStep {
                    duration: Some(duration),
                })
            })
            .map_err(|why| format!("{trimmed:?}: {why}"));
    }
    if let Some(rest) = lower.strip_prefix("mirror") {
        return parse_mirror(rest.trim()).map_err(|why| format!("{trimmed:?}: {why}"));
    }
    if lower.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return parse_weight(&lower)
            .map(Step::SetWeight)
            .map_err(|why| format!("{trimmed:?}: {why}"));
    }
    Err(format!("{trimmed:?} is not a step; {STEP_SYNTAX}"))
}

/// `N%` or `Nbp`, more than 0, then an optional duration: a mirror step's rest.
fn parse_mirror(rest: &str) -> Result<Step, String> {
    let (share, duration) = rest.split_once(' ').unwrap_or((rest, ""));
    if share.is_empty() {
        return Err("give the share of requests to copy, e.g. mirror 20% or mirror 20% 1m".into());
    }
    let share = parse_weight(share)?;
    if share.percent == Some(0.0) || share.basis_points == Some(0) {
        return Err("a mirror of 0% copies nothing; give more than 0%".into());
    }
    let duration = match duration.trim() {
        "" => None,
        text => Some(parse_duration(text)?),
    };
    Ok(Step::Mirror(MirrorStep {
        percent: share.percent,
        basis_points: share.basis_points,
        duration,
    }))
}

/// Parses a weight: `25%`, `12.5%` (at most two decimals: the resolution is 0.01 %) or `2500bp`
/// (basis points, 10000 = 100 %). A bare number is refused rather than guessed at.
pub fn parse_weight(text: &str) -> Result<Weight, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    if let Some(number) = lower.strip_suffix('%') {
        let basis_points = percent_to_basis_points(number.trim())?;
        // Sent as percent, as typed, so the stored spec reads the way the person wrote it.
        return Ok(Weight {
            percent: Some(f64::from(basis_points) / 100.0),
            basis_points: None,
        });
    }
    if let Some(number) = lower.strip_suffix("bp") {
        let basis_points: u32 = number.trim().parse().map_err(|_| {
            format!("{number:?} is not a whole number of basis points (e.g. 2500bp)")
        })?;
        if basis_points > TOTAL_WEIGHT {
            return Err(format!(
                "{basis_points}bp is more than {TOTAL_WEIGHT}bp (100%)"
            ));
        }
        return Ok(Weight::basis_points(basis_points));
    }
    if lower.parse::<f64>().is_ok() {
        return Err(format!(
            "a weight needs a unit: write {text}% (percent) or {text}bp (basis points)"
        ));
    }
    Err(format!(
        "{text:?} is not a weight; write N% (e.g. 25% or 12.5%) or Nbp (e.g. 2500bp)"
    ))
}

/// `12.5` → 1250. Parsed as decimal text, not as a float, so `33.33` is exactly 3333 and more
/// than two decimals is an error instead of a silent rounding.
fn percent_to_basis_points(number: &str) -> Result<u32, String> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(format!("{number:?} is not a percentage (e.g. 25 or 12.5)"));
    }
    if fraction.len() > 2 {
        return Err(format!(
            "{number}% has more than two decimals (the resolution is 0.01%)"
        ));
    }
    let whole: u32 = match whole {
        "" => 0,
        // More than 3 digits is over 100 anyway; this also keeps the parse from overflowing.
        digits if digits.trim_start_matches('0').len() > 3 => u32::MAX,
        digits => digits.parse().unwrap_or(u32::MAX),
    };
    let fraction: u32 = format!("{fraction:0<2}").parse().unwrap_or(0);
    let basis_points = whole.saturating_mul(100).saturating_add(fraction);
    if basis_points > TOTAL_WEIGHT {
        return Err(format!("{number}% is more than 100%"));
    }
    Ok(basis_points)
}

/// Parses `--progressive STEP%,MAX%,INTERVAL`, e.g. `10,50,90s`: raise the canary by STEP every
/// INTERVAL up to MAX, then promote. The `%` signs are optional.
pub fn parse_progressive(text: &str) -> Result<Progressive, String> {
    const SYNTAX: &str = "expected STEP%,MAX%,INTERVAL such as 10,50,90s (add 10% every 90s up to 50%, then promote)";
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [step, max, interval] = parts[..] else {
        return Err(format!("{text:?}: {SYNTAX}"));
    };
    let percent = |what: &str, value: &str| {
        percent_to_basis_points(value.strip_suffix('%').unwrap_or(value).trim())
            .map_err(|why| format!("{what} {why}; {SYNTAX}"))
    };
    let step_bp = percent("STEP", step)?;
    let max_bp = percent("MAX", max)?;
    let interval = parse_duration(interval).map_err(|why| format!("INTERVAL {why}"))?;
    if step_bp == 0 {
        return Err("STEP must be more than 0%".into());
    }
    if max_bp < step_bp {
        return Err(format!("MAX {max} is below STEP {step}"));
    }
    Ok(Progressive {
        step_weight: f64::from(step_bp) / 100.0,
        max_weight: f64::from(max_bp) / 100.0,
        interval,
    })
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h` or `1h 30m`; zero is refused because
/// every duration the CLI takes (pauses, intervals, timeouts) would be meaningless at zero.
pub fn parse_duration(text: &str) -> Result<HumanDuration, String> {
    let duration: HumanDuration = text.trim().parse()?;
    if duration.0.is_zero() {
        return Err(format!("{text:?} is zero; give a duration longer than 0s"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pct(p: f64) -> Step {
        Step::SetWeight(Weight {
            percent: Some(p),
            basis_points: None,
        })
    }

    fn pause(d: Option<u64>) -> Step {
        Step::Pause(PauseStep {
            duration: d.map(|ms| HumanDuration(Duration::from_millis(ms))),
        })
    }

    #[test]
    fn steps_parse() {
        let cases: Vec<(&str, Vec<Step>)> = vec![
            (
                "10%,pause,50%,pause 30s,100%",
                vec![
                    pct(10.0),
                    pause(None),
                    pct(50.0),
                    pause(Some(30_000)),
                    pct(100.0),
                ],
            ),
            (
                " 1000bp , PAUSE 500ms ,12.5%",
                vec![
                    Step::SetWeight(Weight::basis_points(1000)),
                    pause(Some(500)),
                    pct(12.5),
                ],
            ),
            ("pause 1h 30m", vec![pause(Some(5_400_000))]),
            (
                "mirror 20% 1m,Mirror 5bp,10%",
                vec![
                    Step::Mirror(MirrorStep {
                        percent: Some(20.0),
                        basis_points: None,
                        duration: Some(HumanDuration(Duration::from_secs(60))),
                    }),
                    Step::Mirror(MirrorStep {
                        percent: None,
                        basis_points: Some(5),
                        duration: None,
                    }),
                    pct(10.0),
                ],
            ),
            ("0%", vec![pct(0.0)]),
            ("33.33%", vec![pct(33.33)]),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_steps(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn step_errors_name_the_item_and_the_reason() {
        let cases = [
            ("", "no steps given"),
            ("10%,,50%", "item 2 is empty"),
            ("10%,", "item 2 is empty"),
            (
                "10%,50",
                "item 2 \"50\": a weight needs a unit: write 50% (percent) or 50bp",
            ),
            ("120%", "item 1 \"120%\": 120% is more than 100%"),
            (
                "10001bp",
                "item 1 \"10001bp\": 10001bp is more than 10000bp",
            ),
            (
                "12.345%",
                "item 1 \"12.345%\": 12.345% has more than two decimals",
            ),
            (
                "10%,pause soon",
                "item 2 \"pause soon\": \"soon\" is not a duration",
            ),
            ("10%,pause 0s", "item 2 \"pause 0s\": \"0s\" is zero"),
            (
                "10%,wait,50%",
                "item 2 \"wait\" is not a step; write N% or Nbp",
            ),
            ("-5%", "item 1 \"-5%\" is not a step"),
            (
                "mirror",
                "item 1 \"mirror\": give the share of requests to copy",
            ),
            (
                "mirror 0%",
                "item 1 \"mirror 0%\": a mirror of 0% copies nothing",
            ),
            (
                "10%,mirror 20 1m",
                "item 2 \"mirror 20 1m\": a weight needs a unit",
            ),
            (
                "mirror 20% soon",
                "item 1 \"mirror 20% soon\": \"soon\" is not a duration",
            ),
            ("1.2.3%", "item 1 \"1.2.3%\": \"1.2.3\" is not a percentage"),
            (
                "99999999999%",
                "item 1 \"99999999999%\": 99999999999% is more than 100%",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_steps(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
    }

    #[test]
    fn weights_parse() {
        let cases = [
            ("25%", Ok((Some(25.0), None))),
            ("0.01%", Ok((Some(0.01), None))),
            (".5%", Ok((Some(0.5), None))),
            ("100%", Ok((Some(100.0), None))),
            ("2500bp", Ok((None, Some(2500)))),
            ("2500BP", Ok((None, Some(2500)))),
            ("0bp", Ok((None, Some(0)))),
            ("25", Err("a weight needs a unit")),
            ("100.01%", Err("more than 100%")),
            ("2.5bp", Err("not a whole number of basis points")),
            ("lots", Err("is not a weight")),
            ("%", Err("is not a percentage")),
        ];
        for (text, expected) in cases {
            match (parse_weight(text), expected) {
                (Ok(weight), Ok((percent, bp))) => {
                    assert_eq!(
                        (weight.percent, weight.basis_points),
                        (percent, bp),
                        "{text}"
                    );
                    // What the CLI sends, the service accepts as the same number of basis points.
                    assert!(weight.checked("w").is_ok(), "{text}");
                }
                (Err(error), Err(part)) => assert!(error.contains(part), "{text}: {error}"),
                (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn percent_text_converts_exactly() {
        for (text, bp) in [("33.33", 3333), ("12.5", 1250), ("0.07", 7), ("007", 700)] {
            assert_eq!(percent_to_basis_points(text), Ok(bp), "{text}");
            let weight = parse_weight(&format!("{text}%")).unwrap();
            assert_eq!(weight.checked("w").unwrap(), bp, "{text}");
        }
    }

    #[test]
    fn progressive_parses() {
        let cases = [
            ("10,50,90s", Ok((10.0, 50.0, 90_000))),
            ("10%, 50%, 1m", Ok((10.0, 50.0, 60_000))),
            ("2.5,100,500ms", Ok((2.5, 100.0, 500))),
            ("10,50", Err("expected STEP%,MAX%,INTERVAL")),
            ("10,50,90s,1", Err("expected STEP%,MAX%,INTERVAL")),
            ("0,50,90s", Err("STEP must be more than 0%")),
            ("20,10,90s", Err("MAX 10 is below STEP 20")),
            ("10,150,90s", Err("MAX 150% is more than 100%")),
            ("ten,50,90s", Err("STEP \"ten\" is not a percentage")),
            ("10,50,soon", Err("INTERVAL \"soon\" is not a duration")),
            ("10,50,0s", Err("INTERVAL \"0s\" is zero")),
        ];
        for (text, expected) in cases {
            match (parse_progressive(text), expected) {
                (Ok(p), Ok((step, max, ms))) => {
                    assert_eq!(
                        (p.step_weight, p.max_weight, p.interval.0),
                        (step, max, Duration::from_millis(ms)),
                        "{text}"
                    );
                }
                (Err(error), Err(part)) => assert!(error.contains(part), "{text}: {error}"),
                (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
