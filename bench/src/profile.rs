//! A system-wide CPU profile of one timed run (`perf record -a`), read back
//! as the share of samples per process (idle included: time nobody
//! computed) and the hottest functions of the consumer, PostgreSQL and the
//! broker. Optional: without a working `perf` the report says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// Samples per second and CPU: enough for a few seconds' run, cheap
/// enough not to disturb it.
pub const FREQUENCY: &str = "499";
/// Functions listed per process.
const HOT_FUNCTIONS: usize = 8;

/// A `perf record -a` in progress.
pub struct Profiler {
    recorder: Child,
    data: PathBuf,
}

/// A process group's hottest functions: (share of the group's own
/// samples, library, function).
pub type HotFunctions = Vec<(f64, String, String)>;

/// What the profile showed.
pub struct Profile {
    /// Share of all samples per process group ("idle" is the CPUs' idle
    /// loop), largest first.
    pub shares: Vec<(String, f64)>,
    /// Per process group, its hottest functions: (share of the group's own
    /// samples, library, function).
    pub hot: Vec<(String, HotFunctions)>,
}

impl Profiler {
    /// Starts recording every CPU, or None (and why) when perf cannot.
    pub async fn start(log_dir: &Path, label: &str) -> Result<Result<Self, String>> {
        let works = Command::new("perf").arg("--version").output().await;
        if !works.is_ok_and(|o| o.status.success()) {
            return Ok(Err(
                "perf is not installed (Debian: `apt-get install linux-perf`)".into()
            ));
        }
        std::fs::create_dir_all(log_dir)?;
        let data = log_dir.join(format!("{label}.perf.data"));
        let _ = std::fs::remove_file(&data);
        let recorder = Command::new("perf")
            .args(["record", "-a", "-F", FREQUENCY, "--quiet", "-o"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                log_dir.join(format!("{label}.perf.log")),
            )?))
            .kill_on_drop(true)
            .spawn()
            .context("could not start perf record")?;
        let mut profiler = Self { recorder, data };
        // perf writes its header once it records; a refusal (e.g.
        // perf_event_paranoid) makes it exit instead.
        let until = Instant::now() + Duration::from_secs(10);
        while !profiler.data.metadata().is_ok_and(|m| m.len() > 0) {
            if let Some(status) = profiler.recorder.try_wait()? {
                return Ok(Err(format!(
                    "perf record exited ({status}): may this user profile every CPU?"
                )));
            }
            if Instant::now() > until {
                return Ok(Err("perf record did not start within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Ok(profiler))
    }

    /// Stops recording and reads the profile back. `groups` names the
    /// processes to attribute by pid (their threads are looked up now,
    /// while they run); PostgreSQL's backends are found by name.
    pub async fn stop(mut self, groups: &[(&str, Vec<u32>)]) -> Result<Profile> {
        let mut group_of_tid: HashMap<u32, &str> = HashMap::new();
        for (name, pids) in groups {
            for pid in pids {
                for tid in threads_of(*pid) {
                    group_of_tid.insert(tid, name);
                }
            }
        }
        if let Some(pid) = self.recorder.id() {
            Command::new("kill").arg("-INT").arg(pid.to_string()).status().await?;
        }
        tokio::time::timeout(Duration::from_secs(60), self.recorder.wait())
            .await
            .context("perf record did not finish writing within 60 s")??;

        let mut shares: HashMap<String, f64> = HashMap::new();
        for line in report(&self.data, &["--sort", "pid"]).await? {
            // "    16.89%    26971:rustc"
            let Some((share, rest)) = percent(&line) else { continue };
            let Some((tid, comm)) = rest.trim().split_once(':') else {
                continue;
            };
            let tid: u32 = tid.trim().parse().unwrap_or(0);
            let group = match (group_of_tid.get(&tid), comm.trim()) {
                (Some(name), _) => (*name).to_string(),
                (None, "swapper") => "idle".to_string(),
                (None, "postgres") => "PostgreSQL".to_string(),
                _ => "other".to_string(),
            };
            *shares.entry(group).or_default() += share;
        }
        let mut shares: Vec<(String, f64)> = shares.into_iter().collect();
        shares.sort_by(|a, b| b.1.total_cmp(&a.1));

        let mut hot = Vec::new();
        for (name, _) in groups {
            let tids: Vec<String> = group_of_tid
                .iter()
                .filter(|(_, group)| *group == name)
                .map(|(tid, _)| tid.to_string())
                .collect();
            if !tids.is_empty() {
                hot.push((
                    (*name).to_string(),
                    functions(&self.data, &["--tid", &tids.join(",")]).await?,
                ));
            }
        }
        hot.push((
            "PostgreSQL".to_string(),
            functions(&self.data, &["--comms", "postgres"]).await?,
        ));
        Ok(Profile { shares, hot })
    }
}

/// The threads of process `pid` (none when it is gone).
fn threads_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The hottest functions among the samples `filter` selects, as shares of
/// those samples.
async fn functions(data: &Path, filter: &[&str]) -> Result<HotFunctions> {
    let mut args = vec!["--sort", "dso,sym", "--percentage", "relative"];
    args.extend_from_slice(filter);
    Ok(report(data, &args)
        .await?
        .iter()
        .filter_map(|line| {
            // "     3.40%  libc.so.6   [.] __memmove_avx512_unaligned_erms"
            let (share, rest) = percent(line)?;
            let (dso, symbol) = rest.trim().split_once(" [")?;
            let symbol = symbol.split_once("] ").map_or(symbol, |(_, s)| s).trim();
            let symbol: String = if symbol.chars().count() > 80 {
                symbol.chars().take(79).chain(['…']).collect()
            } else {
                symbol.to_string()
            };
            Some((share, dso.trim().to_string(), symbol))
        })
        .take(HOT_FUNCTIONS)
        .collect())
}

/// `perf report`'s flat text lines for `args`.
async fn report(data: &Path, args: &[&str]) -> Result<Vec<String>> {
    let output = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "-g", "none", "-i"])
        .arg(data)
        .args(args)
        .output()
        .await?;
    if !output.status.success() {
        bail!("perf report failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Splits "  12.34%  rest" into (12.34, "rest").
fn percent(line: &str) -> Option<(f64, &str)> {
    let (share, rest) = line.trim_start().split_once('%')?;
    Some((share.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn a_report_line_splits_into_its_share_and_the_rest() {
        assert_eq!(
            percent("    16.89%    26971:rustc   "),
            Some((16.89, "    26971:rustc   "))
        );
        assert_eq!(percent("# Samples: 1K"), None);
    }
}
