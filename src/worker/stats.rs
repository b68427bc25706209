//! The Stats actor: samples the machine's resources with sysinfo on a timer,
//! on an arbiter (thread) of its own, since sysinfo reads /proc
//! synchronously and must never hold up the worker's arbiter. `ReadStats`
//! answers with the last sample at once; CPU usage is measured over the
//! interval between two samples.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use sysinfo::{CpuRefreshKind, Disks, System};

use crate::wire::MachineStats;

const MIB: u64 = 1024 * 1024;

/// How often the machine is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub struct Stats {
    system: Option<System>,
    disks: Option<Disks>,
    /// Disk figures are those of the file system holding this directory.
    data_dir: PathBuf,
    last: MachineStats,
    every: Duration,
}

impl Stats {
    /// Starts the actor on a new arbiter thread, sampling every `every`.
    pub fn start(data_dir: &Path, every: Duration) -> Addr<Stats> {
        let data_dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        let arbiter = Arbiter::new();
        Stats::start_in_arbiter(&arbiter.handle(), move |_| {
            let system = match System::new() {
                Ok(mut system) => {
                    system.refresh_cpu_list(CpuRefreshKind::nothing().with_usage());
                    Some(system)
                }
                Err(e) => {
                    log::warn!("stats: sysinfo cannot read this system: {e}");
                    None
                }
            };
            let mut stats = Stats {
                system,
                disks: Disks::new_with_refreshed_list().ok(),
                data_dir,
                last: MachineStats::default(),
                every,
            };
            stats.sample();
            stats
        })
    }

    /// Reads the machine now and keeps the result.
    fn sample(&mut self) {
        let mut stats = MachineStats::default();
        if let Some(system) = &mut self.system {
            system.refresh_cpu_usage();
            system.refresh_memory();
            stats.capacity.cpus = system.cpus().len() as f64;
            stats.capacity.memory_mb = system.total_memory() / MIB;
            stats.cpu_usage_percent = f64::from(system.global_cpu_usage());
            stats.memory_available_mb = system.available_memory() / MIB;
        }
        if let Ok(load) = System::load_average() {
            stats.load_1m = load.one;
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(true);
            // The disk whose mount point is the longest prefix of data_dir.
            let disk = disks
                .iter()
                .filter(|d| self.data_dir.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(disk) = disk {
                stats.capacity.disk_mb = disk.total_space() / MIB;
                stats.disk_free_mb = disk.available_space() / MIB;
            }
        }
        stats.sampled_at = Some(chrono::Utc::now());
        self.last = stats;
    }
}

impl Actor for Stats {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.every, |act, _| act.sample());
    }
}

/// The last sample of the machine's stats.
pub struct ReadStats;

impl Message for ReadStats {
    type Result = MachineStats;
}

impl Handler<ReadStats> for Stats {
    type Result = MessageResult<ReadStats>;

    fn handle(&mut self, _msg: ReadStats, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.last.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn samples_this_machine_on_a_timer() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Stats::start(dir.path(), Duration::from_millis(50));
        let first = stats.send(ReadStats).await.unwrap();
        let s = &first;
        assert!(s.capacity.cpus >= 1.0, "{s:?}");
        assert!(s.capacity.memory_mb > 0, "{s:?}");
        assert!(s.capacity.disk_mb > 0, "{s:?}");
        assert!(s.disk_free_mb <= s.capacity.disk_mb, "{s:?}");
        assert!(s.memory_available_mb <= s.capacity.memory_mb, "{s:?}");
        assert!(s.load_1m >= 0.0, "{s:?}");
        // A later read is a later sample (the timer runs by itself).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let next = stats.send(ReadStats).await.unwrap();
            if next.sampled_at > first.sampled_at {
                assert!((0.0..=100.0).contains(&next.cpu_usage_percent), "{next:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no new sample");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
