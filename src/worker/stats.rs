//! The Stats actor: reads the machine's resources with sysinfo on its own
//! SyncArbiter thread (sysinfo reads /proc synchronously; it never runs on
//! an async arbiter).

use std::path::{Path, PathBuf};

use actix::prelude::*;
use sysinfo::{CpuRefreshKind, Disks, System};

use crate::wire::MachineStats;

const MIB: u64 = 1024 * 1024;

pub struct Stats {
    system: Option<System>,
    disks: Option<Disks>,
    /// Disk figures are those of the file system holding this directory.
    data_dir: PathBuf,
}

impl Stats {
    pub fn start(data_dir: &Path) -> Addr<Stats> {
        let data_dir = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        SyncArbiter::start(1, move || {
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
            Stats {
                system,
                disks: Disks::new_with_refreshed_list().ok(),
                data_dir: data_dir.clone(),
            }
        })
    }

    fn read(&mut self) -> MachineStats {
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
        stats
    }
}

impl Actor for Stats {
    type Context = SyncContext<Self>;
}

/// Reads the machine's stats now.
pub struct ReadStats;

impl Message for ReadStats {
    type Result = MachineStats;
}

impl Handler<ReadStats> for Stats {
    type Result = MessageResult<ReadStats>;

    fn handle(&mut self, _msg: ReadStats, _ctx: &mut SyncContext<Self>) -> Self::Result {
        MessageResult(self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn reads_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Stats::start(dir.path());
        let s = stats.send(ReadStats).await.unwrap();
        assert!(s.capacity.cpus >= 1.0, "{s:?}");
        assert!(s.capacity.memory_mb > 0, "{s:?}");
        assert!(s.capacity.disk_mb > 0, "{s:?}");
        assert!(s.disk_free_mb <= s.capacity.disk_mb, "{s:?}");
        assert!(s.memory_available_mb <= s.capacity.memory_mb, "{s:?}");
    }
}
