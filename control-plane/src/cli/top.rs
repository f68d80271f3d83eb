//! `weftctl top TARGET`: the busiest paths of the selected proxies, from their live requests
//! (tapped for `--duration`), with success rate and latency.

use std::collections::HashMap;
use std::time::Duration;

use weft_api::tap::{TapEvent, tap_event};

use super::tap::TapTarget;
use super::{AdminClient, CliError};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: TapTarget,
    /// How long to watch before printing (or until --max requests have ended).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The busiest rows shown.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// table, or json (one object per row).
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: super::stat::StatOutput,
}

/// What requests are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
struct Key {
    direction: String,
    method: String,
    authority: String,
    path: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
struct Row {
    #[serde(flatten)]
    key: Key,
    count: u64,
    successes: u64,
    #[serde(serialize_with = "as_micros", rename = "best_us")]
    best: Duration,
    #[serde(serialize_with = "as_micros", rename = "worst_us")]
    worst: Duration,
    #[serde(serialize_with = "as_micros", rename = "last_us")]
    last: Duration,
}

/// Requests seen start to end, by path.
#[derive(Debug, Default)]
struct Tally {
    started: HashMap<(String, u64), Key>,
    rows: HashMap<Key, Row>,
}

pub(super) async fn run(
    args: &TopArgs,
    mut client: AdminClient,
    out: &mut impl std::io::Write,
) -> Result<(), CliError> {
    let request = args.target.request(false)?;
    let mut events = client.admin.tap(request).await?.into_inner();
    let mut tally = Tally::default();
    let watching = async {
        while let Some(event) = events.message().await? {
            tally.add(event);
        }
        Ok::<_, CliError>(())
    };
    match tokio::time::timeout(args.duration, watching).await {
        Ok(result) => result?,
        Err(_elapsed) => {}
    }
    let rows = tally.busiest(args.rows);
    match args.output {
        super::stat::StatOutput::Table => {
            let _ = out.write_all(table(&rows).as_bytes());
        }
        super::stat::StatOutput::Json => {
            for row in &rows {
                let _ = writeln!(out, "{}", serde_json::json!(row));
            }
        }
    }
    Ok(())
}

impl Tally {
    fn add(&mut self, event: TapEvent) {
        let id = (event.proxy, event.request_id);
        match event.event {
            Some(tap_event::Event::RequestInit(init)) => {
                self.started.insert(
                    id,
                    Key {
                        direction: init.direction,
                        method: init.method,
                        authority: init.authority,
                        path: init.path,
                    },
                );
            }
            Some(tap_event::Event::ResponseEnd(end)) => {
                // A request that started before the tap did is not counted: its path is unknown.
                let Some(key) = self.started.remove(&id) else {
                    return;
                };
                let took = super::tap::duration(end.duration);
                let success = end.complete
                    && end.status < 500
                    && end.grpc_status.is_none_or(|code| code == 0);
                let row = self.rows.entry(key.clone()).or_insert_with(|| Row {
                    key,
                    count: 0,
                    successes: 0,
                    best: took,
                    worst: took,
                    last: took,
                });
                row.count += 1;
                row.successes += u64::from(success);
                row.best = row.best.min(took);
                row.worst = row.worst.max(took);
                row.last = took;
            }
            _ => {}
        }
    }

    /// The `n` rows with the most requests, busiest first.
    fn busiest(self, n: usize) -> Vec<Row> {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        rows.truncate(n);
        rows
    }
}

fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<9} {:<7} {:<32} {:<40} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "DIRECTION", "METHOD", "AUTHORITY", "PATH", "COUNT", "SUCCESS", "BEST", "WORST", "LAST"
    );
    for row in rows {
        let success = row.successes as f64 / row.count.max(1) as f64 * 100.0;
        let _ = writeln!(
            table,
            "{:<9} {:<7} {:<32} {:<40} {:>7} {:>7.2}% {:>9} {:>9} {:>9}",
            row.key.direction,
            row.key.method,
            row.key.authority,
            row.key.path,
            row.count,
            success,
            latency(row.best),
            latency(row.worst),
            latency(row.last),
        );
    }
    table
}

fn latency(took: Duration) -> String {
    if took < Duration::from_millis(1) {
        format!("{}µs", took.as_micros())
    } else {
        format!("{:.1}ms", took.as_secs_f64() * 1000.0)
    }
}

fn as_micros<S: serde::Serializer>(took: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(took.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use weft_api::tap::{RequestInit, ResponseEnd};

    use super::*;

    fn started(id: u64, path: &str) -> TapEvent {
        TapEvent {
            request_id: id,
            proxy: "shop/web-1".to_string(),
            event: Some(tap_event::Event::RequestInit(RequestInit {
                direction: "outbound".to_string(),
                method: "GET".to_string(),
                authority: "api:80".to_string(),
                path: path.to_string(),
                ..RequestInit::default()
            })),
        }
    }

    fn ended(id: u64, status: u32, micros: i32) -> TapEvent {
        TapEvent {
            request_id: id,
            proxy: "shop/web-1".to_string(),
            event: Some(tap_event::Event::ResponseEnd(ResponseEnd {
                status,
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: micros * 1000,
                }),
                complete: true,
                ..ResponseEnd::default()
            })),
        }
    }

    #[test]
    fn the_busiest_paths_come_first_with_their_success_and_latency() {
        let mut tally = Tally::default();
        for (id, path, status, micros) in [
            (1, "/a", 200, 300),
            (2, "/b", 200, 2_000),
            (3, "/b", 503, 1_000),
            (4, "/b", 200, 1_500),
        ] {
            tally.add(started(id, path));
            tally.add(ended(id, status, micros));
        }
        // Ended without having started under the tap: unknown path, not counted.
        tally.add(ended(9, 200, 10));
        let rows = tally.busiest(10);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].key.path.as_str(), rows[0].count, rows[0].successes),
            ("/b", 3, 2)
        );
        assert_eq!(rows[0].best, Duration::from_micros(1_000));
        assert_eq!(rows[0].worst, Duration::from_micros(2_000));
        assert_eq!(rows[0].last, Duration::from_micros(1_500));
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("DIRECTION"));
        assert!(
            lines[1].contains("/b") && lines[1].contains("66.67%") && lines[1].contains("2.0ms")
        );
        assert!(
            lines[2].contains("/a") && lines[2].contains("100.00%") && lines[2].contains("300µs")
        );
        let json = serde_json::json!(rows[1]);
        assert_eq!(json["path"], "/a");
        assert_eq!(json["best_us"], 300);
    }
}
