//! Telling the kernel: the `nft` program (Debian's `nftables`), fed a
//! script on its standard input, which it applies in one transaction.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::rules;

/// Why the kernel could not be told.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (is Debian's nftables installed, and is this root?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the table: {0}")]
    Refused(String),
    #[error("cannot set {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Applies `script` (all of it or nothing).
pub async fn apply(script: &str) -> Result<(), NftError> {
    run(&["-f", "-"], Some(script)).await.map(drop)
}

/// What `nft list table ip <name>` prints, with the rules' counters.
pub async fn listing(name: &str) -> Result<String, NftError> {
    run(&["list", "table", "ip", name], None).await
}

async fn run(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the tables of Cube processes that are gone (killed before they
/// could remove their own), so that no dead process's forwarding
/// outlives it for longer than the next start of a node. Returns how
/// many were removed; fails only when the tables cannot be listed.
pub async fn remove_orphans() -> Result<usize, NftError> {
    let tables = run(&["list", "tables", "ip"], None).await?;
    let mut removed = 0;
    for line in tables.lines() {
        let Some(name) = line.trim().strip_prefix("table ip ") else {
            continue;
        };
        let Some(pid) = rules::owner(name) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        // One that cannot be removed is said, and the others still are.
        match apply(&rules::removal(name)).await {
            Ok(()) => removed += 1,
            Err(e) => log::warn!("ingress: cannot remove table {name} of a process gone: {e}"),
        }
    }
    Ok(removed)
}

/// Whether `pid` is a running process of the same program as this one.
fn alive(pid: u32) -> bool {
    let comm = |p: &Path| std::fs::read_to_string(p.join("comm")).ok();
    match (
        comm(Path::new(&format!("/proc/{pid}"))),
        comm(Path::new("/proc/self")),
    ) {
        (Some(theirs), Some(ours)) => theirs == ours,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Lets packets from loopback addresses leave through `bridge` (to be
/// given the bridge's address on the way out): what a client on the
/// node's loopback needs to reach a replica there through the kernel. The
/// table's `guard` chain drops such packets arriving from the bridge.
pub async fn route_localnet(bridge: &str) -> Result<(), NftError> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    tokio::fs::write(&path, b"1")
        .await
        .map_err(|source| NftError::Sysctl { path, source })
}

/// Removes the table `name` now, without the async runtime (for a
/// process that is stopping).
pub fn remove_now(name: &str) {
    let child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Ok(mut child) = child {
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            let _ = stdin.write_all(rules::removal(name).as_bytes());
        }
        let _ = child.wait();
    }
}
