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
    #[error("cannot talk to nft: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("nft did not finish within {0:?}")]
    Hung(std::time::Duration),
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

/// How long one `nft` may take (it is killed after).
const NFT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn run(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    tokio::time::timeout(NFT_TIMEOUT, run_once(args, input))
        .await
        .map_err(|_| NftError::Hung(NFT_TIMEOUT))?
}

async fn run_once(args: &[&str], input: Option<&str>) -> Result<String, NftError> {
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
            .map_err(NftError::Pipe)?;
    }
    let out = child.wait_with_output().await.map_err(NftError::Pipe)?;
    if !out.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the tables of Cube processes that are gone (killed before they
/// could remove their own), so that no dead process's forwarding
/// outlives it for longer than the next start of a node. At a node's
/// start (`starting`) the tables that bear its own process id are an
/// earlier process's (one that had the same id: the first process of a
/// container, say) and go too. Returns how many were removed; fails only
/// when the tables cannot be listed.
pub async fn remove_orphans(starting: bool) -> Result<usize, NftError> {
    let tables = run(&["list", "tables", "ip"], None).await?;
    let mut removed = 0;
    for name in table_names(&tables) {
        let Some(pid) = rules::owner(name) else {
            continue;
        };
        let earlier_self = starting && pid == std::process::id();
        if alive(pid) && !earlier_self {
            continue;
        }
        // Its bridges let loopback packets through no more before its
        // guard goes; a guard whose bridge could not be shut (but still
        // is there) stays.
        let shut = match listing(name).await {
            Ok(listing) => shut_all(&guarded(&listing), !starting).await,
            Err(e) => {
                log::warn!("ingress: cannot read table {name} of a process gone: {e}");
                false
            }
        };
        if !shut {
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

/// The names in what `nft list tables ip` prints.
fn table_names(tables: &str) -> impl Iterator<Item = &str> {
    tables
        .lines()
        .filter_map(|line| line.trim().strip_prefix("table ip "))
}

/// The guard tables of living Cube processes other than this one (and
/// this one's too, with `with_own`).
fn living_guards(tables: &str, with_own: bool) -> Vec<String> {
    let me = std::process::id();
    table_names(tables)
        .filter(|name| name.starts_with(rules::GUARD_PREFIX))
        .filter(|name| rules::owner(name).is_some_and(|pid| (with_own || pid != me) && alive(pid)))
        .map(str::to_string)
        .collect()
}

/// Whether the table `name` guards `bridge` (drops its loopback
/// packets).
pub async fn guards(name: &str, bridge: &str) -> bool {
    listing(name)
        .await
        .is_ok_and(|listing| guards_in(&listing, bridge))
}

/// Whether a table's listing guards `bridge`.
fn guards_in(listing: &str, bridge: &str) -> bool {
    guarded(listing).iter().any(|b| b == bridge)
}

/// Whether a living Cube process other than this one guards `bridge`
/// (a node sharing this one's container network): it then still lets
/// loopback packets out through the bridge, safely, and the bridge is
/// left to it.
pub async fn guarded_by_others(bridge: &str) -> bool {
    guarded_by_living(bridge, false).await
}

async fn guarded_by_living(bridge: &str, with_own: bool) -> bool {
    let Ok(tables) = run(&["list", "tables", "ip"], None).await else {
        return false;
    };
    for name in living_guards(&tables, with_own) {
        if guards(&name, bridge).await {
            return true;
        }
    }
    false
}

/// [`guarded_by_others`], now, without the async runtime (for a process
/// that is stopping).
fn guarded_by_others_now(bridge: &str) -> bool {
    let Some(tables) = run_now(&["list", "tables", "ip"], None) else {
        return false;
    };
    living_guards(&tables, false).iter().any(|name| {
        run_now(&["list", "table", "ip", name], None)
            .is_some_and(|listing| guards_in(&listing, bridge))
    })
}

/// Shuts `bridges` to loopback packets; whether none is left open (a
/// bridge that is gone is not, nor one a living node guards: another,
/// or this one `with_own`).
async fn shut_all(bridges: &[String], with_own: bool) -> bool {
    let mut shut = true;
    for bridge in bridges {
        if guarded_by_living(bridge, with_own).await {
            continue;
        }
        if let Err(e) = set_route_localnet(bridge, false).await {
            let gone = !Path::new(&localnet_path(bridge)).exists();
            if !gone {
                log::warn!("ingress: {e}");
                shut = false;
            }
        }
    }
    shut
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

/// The bridges a table's `guard` chain guards, as `nft list` shows it.
fn guarded(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.contains("127.0.0.0/8 drop"))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|b| crate::runtime::interface_name(b))
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn localnet_path(bridge: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
}

/// Whether packets from loopback addresses may leave through `bridge`.
pub async fn route_localnet(bridge: &str) -> Result<bool, NftError> {
    let path = localnet_path(bridge);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => Ok(text.trim() == "1"),
        Err(source) => Err(NftError::Sysctl { path, source }),
    }
}

/// Lets packets from loopback addresses leave through `bridge` (to be
/// given the bridge's address on the way out), or no more: what a client
/// on the node's loopback needs to reach a replica there through the
/// kernel. Set only while the table's `guard` chain drops such packets
/// arriving from the bridge (a container could otherwise reach the
/// host's loopback services).
pub async fn set_route_localnet(bridge: &str, on: bool) -> Result<(), NftError> {
    let path = localnet_path(bridge);
    tokio::fs::write(&path, if on { b"1" } else { b"0" })
        .await
        .map_err(|source| NftError::Sysctl { path, source })
}

/// Gives `bridge` back the `route_localnet` it had, now, without the
/// async runtime (for a process that is stopping); left as it is while
/// another living node guards it.
pub fn restore_route_localnet_now(bridge: &str, was: bool) {
    if guarded_by_others_now(bridge) {
        return;
    }
    if let Err(e) = std::fs::write(localnet_path(bridge), if was { "1" } else { "0" }) {
        log::warn!("ingress: cannot restore route_localnet of {bridge}: {e}");
    }
}

/// Removes the table `name` now, without the async runtime (for a
/// process that is stopping).
pub fn remove_now(name: &str) {
    run_now(&["-f", "-"], Some(&rules::removal(name)));
}

/// [`run`], now, without the async runtime (for a process that is
/// stopping): what `nft` printed, if it succeeded.
fn run_now(args: &[&str], input: Option<&str>) -> Option<String> {
    let mut child = std::process::Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        use std::io::Write as _;
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_names_the_bridges_its_guard_guards() {
        let listing = "table ip cube_ingress_1 {\n\tchain guard {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\
            \t\tiifname \"br-0898695589fa\" ip saddr 127.0.0.0/8 drop\n\
            \t\tiifname \"br-0898695589fa\" ip daddr 127.0.0.0/8 drop\n\t}\n}\n";
        assert_eq!(guarded(listing), ["br-0898695589fa"]);
        assert!(guarded("table ip cube_ingress_1 {}").is_empty());
        // What is no interface's name is not written into /proc.
        assert!(guarded("iifname \"../../x\" ip saddr 127.0.0.0/8 drop").is_empty());
    }
}
