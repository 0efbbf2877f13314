//! Reading single series out of Envoy's `/stats/prometheus` text, for assertions.

/// The value of the series `name` whose labels include every pair in `labels` (other labels may be
/// present). Sums over all matching series, so `&[]` gives the total over every label set.
/// `None` if no series matches.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, number)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let all_present = labels.iter().all(|(key, wanted)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{key}=\"{wanted}\""))
        });
        if all_present {
            if let Ok(number) = number.parse::<f64>() {
                *total.get_or_insert(0.0) += number;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_sums_series() {
        let text = "# TYPE m counter\nm{route=\"r\",variant=\"a\"} 2\nm{route=\"r\",variant=\"b\"} 3\nother 1\nm_bucket{le=\"1\"} 9\n";
        assert_eq!(value(text, "m", &[("variant", "a")]), Some(2.0));
        assert_eq!(value(text, "m", &[("route", "r")]), Some(5.0));
        assert_eq!(value(text, "m", &[("variant", "c")]), None);
        assert_eq!(value(text, "other", &[]), Some(1.0));
    }
}
