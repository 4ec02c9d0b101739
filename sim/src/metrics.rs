//! Parsing a node's `/metrics` (Prometheus text format) into samples the checkers can sum.
//!
//! Names are matched as exported (dots already turned into underscores). A counter may be
//! exported with or without the OpenMetrics `_total` suffix; [`Metrics::counter`] accepts both.

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text; lines that do not parse are skipped (comments included).
    pub fn parse(text: &str) -> Metrics {
        Metrics {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// Sum of every sample named `name` (any labels); `None` if there is none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for sample in self.samples.iter().filter(|s| s.name == name) {
            found = true;
            total += sample.value;
        }
        found.then_some(total)
    }

    /// Sum over samples named `name` or `name_total`.
    pub fn counter(&self, name: &str) -> Option<f64> {
        self.sum(name)
            .or_else(|| self.sum(&format!("{name}_total")))
    }

    /// The value of the sample with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Adds another scrape's samples (e.g. every node of a cluster) so sums cover all.
    pub fn merge(&mut self, other: Metrics) {
        self.samples.extend(other.samples);
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line[..open].chars().all(is_name_char) => {
            let close = find_label_end(line, open)?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        _ => {
            let end = line.find(char::is_whitespace)?;
            (&line[..end], BTreeMap::new(), &line[end..])
        }
    };
    if name.is_empty() || !name.chars().all(is_name_char) {
        return None;
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Index of the `}` closing the label set that opens at `open`, honouring quoted values.
fn find_label_end(line: &str, open: usize) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let mut chars = after.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end?;
        labels.insert(key, value);
        rest = after[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# HELP logical_replication_events_ingested rows applied
# TYPE logical_replication_events_ingested counter
logical_replication_events_ingested 41
logical_replication_events_dlqed_total 2
logical_replication_events_ingested_by_label{label="a"} 5
logical_replication_events_ingested_by_label{label="b,c=\"d\""} 7
logical_replication_commit_latency_bucket{le="+Inf"} 9
logical_replication_replicated_time_seconds 1.7e9 1732250000000
garbage line
"#;

    #[test]
    fn parses_samples_labels_and_suffixes() {
        let m = Metrics::parse(TEXT);
        assert_eq!(m.counter("logical_replication_events_ingested"), Some(41.0));
        assert_eq!(m.counter("logical_replication_events_dlqed"), Some(2.0));
        assert_eq!(
            m.sum("logical_replication_events_ingested_by_label"),
            Some(12.0)
        );
        assert_eq!(
            m.get(
                "logical_replication_events_ingested_by_label",
                &[("label", "b,c=\"d\"")]
            ),
            Some(7.0)
        );
        assert_eq!(
            m.get(
                "logical_replication_commit_latency_bucket",
                &[("le", "+Inf")]
            ),
            Some(9.0)
        );
        assert_eq!(
            m.sum("logical_replication_replicated_time_seconds"),
            Some(1.7e9)
        );
        assert_eq!(m.sum("missing"), None);
        assert_eq!(m.samples.len(), 6);
    }

    #[test]
    fn merge_sums_across_nodes() {
        let mut a = Metrics::parse("x 1\n");
        a.merge(Metrics::parse("x 2\n"));
        assert_eq!(a.sum("x"), Some(3.0));
    }
}
